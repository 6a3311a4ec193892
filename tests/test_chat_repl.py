"""`gpt-finetune chat` under a pseudo-terminal, as a person would use it: answers stream, the conversation is
kept, /reset starts over, and Ctrl-D or Ctrl-C leave cleanly (05_cli shows /exit)."""
import fcntl, os, pty, select, subprocess, termios, time
from pathlib import Path

import pytest

from conftest import CLI, save_tiny


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    "A tiny saved GPT-2 (plain prompts): its random answers decode to visible words."
    return save_tiny(tmp_path_factory, "gpt2")


def _own_terminal():
    "Make the pseudo-terminal the command's controlling terminal, so Ctrl-C typed into it sends SIGINT, as in a shell."
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    "A command on a pseudo-terminal: type into it, read what it shows."
    def __init__(self, *argv):
        self.fd, slave = pty.openpty()
        self.proc = subprocess.Popen(list(map(str, argv)), stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                     preexec_fn=_own_terminal)
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
