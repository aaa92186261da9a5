"""Runs a command on a pseudo-terminal, as a person at a keyboard would: `on_a_terminal.py
ANSWERS_JSON PROGRAM ARGS...` answers each prompt of ANSWERS_JSON (`[["Password: ",
"secret"], ...]`) in turn, then prints everything the terminal showed and exits with the
program's code. What the terminal echoes is in the output: a prompt with echo off shows none of
the answer. Each answer is typed once the terminal stops echoing (or after 2 s), as a person
types after the prompt: a program may print its prompt a moment before it turns echo off."""

import json
import os
import pty
import sys
import termios
import time


def main() -> int:
    answers = json.loads(sys.argv[1])
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.argv[2], sys.argv[2:])
    shown = b""

    def read_more() -> bool:
        nonlocal shown
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            return False
        shown += chunk
        return bool(chunk)

    for prompt, answer in answers:
        while prompt.encode() not in shown:
            if not read_more():
                break
        shown = shown.replace(prompt.encode(), b"<" + prompt.strip().encode() + b">", 1)
        # The master shares the terminal's settings with the program's side.
        until = time.monotonic() + 2.0
        while termios.tcgetattr(fd)[3] & termios.ECHO and time.monotonic() < until:
            time.sleep(0.01)
        os.write(fd, answer.encode() + b"\n")
    while read_more():
        pass
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(shown.decode(errors="replace"))
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
