"""Reading texts to classify as they come: one per line from a pipe, a file or stdin, in micro-batches.

`micro_batches` hands out lists of lines as soon as `size` lines are in, or no new line has come for
`idle` seconds while some wait, or the oldest has waited `MAX_WAIT` (a log written every few
milliseconds never falls silent, and must not wait for a whole batch). A file or a fast pipe fills
whole batches (sorted by length and run like `Classifier.predict`'s, so throughput stays the batch
path's), while a line typed into an open pipe (`tail -f log | lstmcli predict -`) is answered after
`idle` of silence. A reader thread moves the bytes; it stops `AHEAD` chunks ahead of the model, so
memory stays flat however long the input is.

Lines end at "\\n" (and a "\\r" before it) only, as for `wc -l`: str.splitlines would also cut at \\x85,
\\u2028 and other separators that occur inside real texts (IMDB's reviews hold \\x85), and the outputs
would no longer line up with the input lines. Bad UTF-8 bytes are replaced, not refused: one odd byte
in a log must not stop a stream.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO

CHUNK = 1 << 16  # bytes per read: what a pipe holds at once
AHEAD = 16  # chunks read ahead of the model at most (the reader blocks beyond it): flat memory
IDLE = 0.02  # seconds of silence after which the lines in hand are classified
MAX_WAIT = 0.1  # seconds a line waits at most for its batch to fill, even while more lines trickle in
BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark, which some editors start a file with: not text


def clip(line: bytes, keep: int | None) -> bytes:
    """A line over 2 x `keep` bytes as its first and last `keep` bytes, a space between: one
    endless line (`tr -d '\\n' < big | lstmcli predict -`) must not take all memory. The model only
    sees the first (and with `truncate = head_tail` the last) max_length tokens, which `keep` covers."""
    if keep is None or len(line) <= 2 * keep:
        return line
    return line[:keep] + b" " + line[-keep:]


class _Reader(threading.Thread):
    """Moves whole lines from `stream` into a bounded queue, as lists (one queue item per read, not
    per line: a queue operation per line would cost more than tokenizing some texts)."""

    END = object()

    def __init__(self, stream: BinaryIO, keep: int | None):
        super().__init__(daemon=True, name="lstmcli-stdin")  # a daemon: a closed pipe never hangs exit
        self.stream, self.keep = stream, keep
        self.out: queue.Queue = queue.Queue(maxsize=AHEAD)
        self.error: BaseException | None = None

    def run(self) -> None:
        read = getattr(self.stream, "read1", self.stream.read)  # read1: what is there, without waiting
        parts: list[bytes] = []  # the line being read, in pieces: joining at each read would be quadratic
        held = 0
        at_start = True  # a byte order mark is dropped at the start of the stream only
        try:
            while chunk := read(CHUNK):
                if at_start:
                    chunk, at_start = chunk.removeprefix(BOM), False
                if b"\n" not in chunk:
                    parts.append(chunk)
                    held += len(chunk)
                    if self.keep and held > 4 * self.keep:
                        parts = [clip(b"".join(parts), self.keep)]
                        held = len(parts[0])
                    continue
                first, *lines, last = chunk.split(b"\n")
                lines.insert(0, b"".join(parts) + first)
                parts, held = [last], len(last)
                self.out.put([self._text(line) for line in lines])
            if held:
                self.out.put([self._text(b"".join(parts))])  # a last line without its newline
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, which raises it)
            self.error = exc
        finally:
            self.out.put(self.END)

    def _text(self, line: bytes) -> str:
        return clip(line.removesuffix(b"\r"), self.keep).decode("utf-8", errors="replace")


def micro_batches(stream: BinaryIO, size: int, idle: float = IDLE,
                  keep: int | None = None) -> Iterator[list[str]]:
    """Lists of at most `size` lines of `stream`, in order, each handed out when full, after `idle`
    seconds without a new line, or once its oldest line has waited MAX_WAIT. `keep` bounds the bytes
    kept of one line (see `clip`)."""
    reader = _Reader(stream, keep)
    reader.start()
    pending: list[str] = []
    due = 0.0  # when the oldest line in hand must be answered
    while True:
        try:
            # with lines in hand wait `idle` at most (less when they are due); with none, as long as it takes
            wait = min(idle, due - time.monotonic()) if pending else None
            if wait is not None and wait <= 0:
                raise queue.Empty
            item = reader.out.get(timeout=wait)
        except queue.Empty:
            yield pending
            pending = []
            continue
        if item is _Reader.END:
            break
        if not pending:
            due = time.monotonic() + MAX_WAIT
        pending.extend(item)
        while len(pending) >= size:
            yield pending[:size]
            del pending[:size]
            due = time.monotonic() + MAX_WAIT  # (the rest came while that batch ran)
    if reader.error is not None:
        raise reader.error
    if pending:
        yield pending


def keep_bytes(max_length: int) -> int:
    """The bytes of a line's head and of its tail that hold a text's first and last `max_length`
    tokens: a token is at most PREFIX_CHARS_PER_TOKEN characters of the prefix Classifier.encode reads
    (see there), and a character at most 4 bytes of UTF-8."""
    from lstmcli.inference.predict import PREFIX_CHARS_PER_TOKEN
    return max(1 << 20, max_length * PREFIX_CHARS_PER_TOKEN * 4)
