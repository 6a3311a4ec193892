"""`gpt-finetune chat` under a pseudo-terminal, as a person would use it: answers stream, the conversation is
kept, /reset starts over, Ctrl-D or Ctrl-C leave cleanly wherever the Ctrl-C lands (05_cli shows /exit), and the
prompt has readline's line editing and history, kept in a file on request."""
import fcntl, os, pty, select, signal, subprocess, sys, termios, time
from pathlib import Path

import pytest

from conftest import CLI, save_tiny


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    "A tiny saved GPT-2 (plain prompts): its random answers decode to visible words."
    return save_tiny(tmp_path_factory, "gpt2")


def _ctrl_c_as_in_a_shell():
    "Ctrl-C's default action in the command, even when these tests run in a background job (which ignores SIGINT)."
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _own_terminal():
    "Make the pseudo-terminal the command's controlling terminal, so Ctrl-C typed into it sends SIGINT, as in a shell."
    _ctrl_c_as_in_a_shell()
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    "A command on a pseudo-terminal: type into it, read what it shows."
    def __init__(self, *argv):
        self.fd, slave = pty.openpty()
        self.proc = subprocess.Popen(list(map(str, argv)), stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                     preexec_fn=_own_terminal, env={**os.environ, "TERM": "xterm"})
        os.close(slave)
        self.seen = ""

    def read_until(self, text: str, timeout: float = 120) -> str:
        end, start = time.time() + timeout, len(self.seen)
        while text not in self.seen[start:]:
            if time.time() > end: raise AssertionError(f"no {text!r} within {timeout} s; screen:\n{self.seen[-2000:]}")
            if select.select([self.fd], [], [], 0.5)[0]:
                try: self.seen += os.read(self.fd, 4096).decode("utf-8", "replace")
                except OSError: break  # the command ended
        return self.seen[start:]

    def type(self, text: str): os.write(self.fd, text.encode())

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self.read_until("", 0.1)
        return code


def test_chat_keeps_the_conversation_and_resets(gpt2_dir):
    term = Terminal(CLI, "chat", "--model", gpt2_dir, "--temperature", "0", "--max-tokens", "6",
                    "--system", "Be brief.")
    term.read_until("you> ")
    term.type("What is two plus two?\n")
    first = term.read_until("you> ")
    assert "model> " in first and len(first.split("model> ", 1)[1].replace("you> ", "").strip()) > 0, first
    term.type("And three plus three?\n")
    term.read_until("you> ")
    term.type("/help\n")
    assert "/reset" in term.read_until("you> ")
    term.type("/reset\n")
    assert "new conversation" in term.read_until("you> ")
    term.type("What is two plus two?\n")  # after /reset the same first question gets the same (greedy) answer
    assert term.read_until("you> ").split("model> ", 1)[1] == first.split("model> ", 1)[1], term.seen[-1000:]
    term.type("\x04")  # Ctrl-D at the prompt leaves
    assert term.wait() == 0 and "Traceback" not in term.seen


def test_ctrl_c_leaves_cleanly(gpt2_dir):
    term = Terminal(CLI, "chat", "--model", gpt2_dir, "--max-tokens", "4")
    term.read_until("you> ")
    term.type("\x03")
    assert term.wait() == 0 and "Traceback" not in term.seen and "KeyboardInterrupt" not in term.seen, term.seen


# A Ctrl-C that lands after the prompt is printed but before the read starts only sets Python's signal flag: the
# read then blocks. `_thread.interrupt_main` creates exactly that state (the flag, no signal to interrupt the
# read), so this hits the race every time instead of once in a while.
RACE = """
import _thread, threading, time
from gpt_finetune.cli import ChatConfig, chat_repl
reading = threading.Event()
def ctrl_c(): reading.wait(); time.sleep(0.5); _thread.interrupt_main()  # lands while the read waits
threading.Thread(target=ctrl_c, daemon=True).start()
print("left with", chat_repl(None, None, ChatConfig(), read=lambda p: (reading.set(), input(p))[1]), flush=True)
"""


@pytest.mark.parametrize("stdin", ["pipe", "terminal"])
def test_a_ctrl_c_that_lands_before_the_read_is_honoured(stdin):
    fd, slave = pty.openpty() if stdin == "terminal" else os.pipe()  # either way, nothing is ever typed
    try:
        proc = subprocess.Popen([sys.executable, "-c", RACE], stdin=slave if stdin == "terminal" else fd,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=_ctrl_c_as_in_a_shell)
        try: out = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            proc.kill(); proc.communicate()
            raise AssertionError("the chat kept waiting for a line after Ctrl-C") from None
    finally: os.close(fd); os.close(slave)
    assert proc.returncode == 0 and "left with []" in out and "Traceback" not in out, out


def test_line_editing_and_history_file(gpt2_dir, tmp_path):
    history = tmp_path / "history"
    term = Terminal(CLI, "chat", "--model", gpt2_dir, "--temperature", "0", "--max-tokens", "2", "--history", history)
    term.read_until("you> ")
    term.type("hello wrld" + "\x1b[D" * 3 + "o\r")  # three steps left, insert the missing letter
    term.read_until("you> ")
    term.type("\x1b[A\r")  # the up arrow recalls the line just sent
    assert "hello world" in term.read_until("you> ")  # readline shows the recalled line
    term.type("/exit\r")
    assert term.wait() == 0 and "Traceback" not in term.seen, term.seen
    assert history.read_text().splitlines() == ["hello world", "/exit"]  # a repeated line is kept once
    again = Terminal(CLI, "chat", "--model", gpt2_dir, "--history", history)  # the next chat starts with that history
    again.read_until("you> ")
    again.type("\x1b[A\r")  # the last line of the previous chat: /exit
    assert again.wait() == 0, again.seen


def test_history_file_in_a_missing_folder_is_one_line(gpt2_dir, tmp_path):
    res = subprocess.run([CLI, "chat", "--model", str(gpt2_dir), "--history", str(tmp_path / "no" / "history")],
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"gpt-finetune: error: {tmp_path / 'no' / 'history'}: no such folder for the history file"], res.stderr
