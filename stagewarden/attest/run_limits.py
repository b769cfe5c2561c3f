"""The limits on what the readers of a run directory read: every size and count they take from a
directory, which whoever holds it may have made hostile.

Each file is opened without following a symbolic link, must be a regular file (a FIFO, device
or folder is refused before it is read) and is read up to its limit, never further; a folder on
the way to it (``attestation/``) must be a real folder, not a link. A file or count beyond its
limit is refused with one line naming the file and the limit (``stagewarden audit`` and
``stagewarden report`` exit 2). The receipt log is scanned in windows
(``stagewarden.attest.log_source``), so its memory is that of the records it keeps.

========================== ============== ====================================================
limit                      value          what it bounds
========================== ============== ====================================================
``MAX_RECORD_BYTES``       16 MiB         ``summary.json``
``MAX_WORKERS``            16,384         workers listed in ``summary.json``
``MAX_FILE_BYTES``         16 MiB         ``attestation/verifier.pub``, ``<worker>.ear``,
                                          ``<worker>.evidence``
``MAX_LOG_RECORDS``        50,000         records of ``receipts.log`` the audit reads (the
                                          audit's ``--max-records`` raises it)
``LOG_BYTES_PER_RECORD``   640            ``receipts.log``: at most this many bytes per
                                          allowed record (32,000,016 bytes by default)
``MAX_FINDINGS_PER_CODE``  100            findings of one code the audit lists (it counts
                                          the rest)
``MAX_EVENTS_BYTES``       32 MiB         ``events.jsonl``
``MAX_EVENT_LINE_BYTES``   1 MiB          one line of ``events.jsonl``
``MAX_EVENTS``             200,000        lines of ``events.jsonl``
``MAX_METRICS_BYTES``      32 MiB         ``metrics.csv``
========================== ============== ====================================================
"""

from __future__ import annotations

#: Largest ``summary.json`` read, in bytes.
MAX_RECORD_BYTES = 16 * 1024 * 1024
#: Most workers a run record may list (the audit reads each one's results).
MAX_WORKERS = 16_384
#: Largest verifier key, result-token or evidence file read, in bytes.
MAX_FILE_BYTES = 16 * 1024 * 1024
#: Most receipt-log records the audit reads by default. The audit keeps every record (about 2.3
#: KB each in memory, with its parse and findings), so this bounds its memory.
MAX_LOG_RECORDS = 50_000
#: How many bytes of receipt log each allowed record allows (a receipt or signed header takes
#: about 300 to 400 bytes with its frame; this leaves room for long identifiers).
LOG_BYTES_PER_RECORD = 640
#: Most findings of one code the audit lists; it counts the rest in one more finding (a hostile
#: log can make one finding per record, and a report of 100,000 rows helps nobody).
MAX_FINDINGS_PER_CODE = 100
#: Largest ``events.jsonl`` read, in bytes.
MAX_EVENTS_BYTES = 32 * 1024 * 1024
#: Longest line of ``events.jsonl``, in bytes (without its newline).
MAX_EVENT_LINE_BYTES = 1024 * 1024
#: Most lines of ``events.jsonl`` read.
MAX_EVENTS = 200_000
#: Largest ``metrics.csv`` read, in bytes.
MAX_METRICS_BYTES = 8 * 1024 * 1024


def max_log_bytes(records: int) -> int:
    """The largest receipt log read when at most ``records`` records are: its 16-byte file header
    and :data:`LOG_BYTES_PER_RECORD` bytes per record."""
    return 16 + LOG_BYTES_PER_RECORD * records
