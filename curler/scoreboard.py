"""The scoreboard: a memory-mapped file where each child publishes its state and heartbeat.

The supervisor creates it in ``/dev/shm`` (or the temporary directory) before
forking, so children write into shared memory with no system call per job.
The supervisor reads it to find hung children and the job a crashed child
held; ``curlerd status`` reads it from another process. Times are
``time.monotonic()`` values, which on Linux are comparable across processes.

The file also contains the crash table: for the job keys (see :func:`job_key`)
of jobs that crashed children, how many they crashed. A child fails a job that
crashed ``max-job-crashes`` children instead of running it.
"""

import hashlib
import mmap
import os
import struct
import tempfile

MAGIC = b"CURLSB01"
HEADER = struct.Struct("<8sQI")  # magic, crash table generation, crash table entries written
CRASH_OFFSET = 64
CRASH_ENTRY = 64
CRASH_RECORD = struct.Struct("<16sI")  # job key, crashes
CRASH_CAPACITY = 127
SLOTS_OFFSET = CRASH_OFFSET + CRASH_ENTRY * (CRASH_CAPACITY + 1)
SLOT_SIZE = 1024
SLOT_COUNT = 2048

# Slot layout: pid, state, then the fields a child rewrites around each job.
SLOT_PID = struct.Struct("<i")
SLOT_STATE = struct.Struct("<B")
STATE_OFFSET = 4
SLOT_STARTED = struct.Struct("<d")
STARTED_OFFSET = 16
# heartbeat, job started, jobs done, handle, method, queue, job key
SLOT_ACTIVITY = struct.Struct("<ddQ64s128s64s16s")
ACTIVITY_OFFSET = 24
HEARTBEAT = struct.Struct("<d")
KEY_OFFSET = ACTIVITY_OFFSET + SLOT_ACTIVITY.size - 16
COUNTERS_OFFSET = 320

# Counters a child adds to after each job, read by the metrics endpoint.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))
OUTCOMES = ("success", "retried", "failed", "dead_lettered", "released")
SUCCESS, RETRIED, FAILED, DEAD_LETTERED, RELEASED = range(len(OUTCOMES))
MAX_QUEUES_PER_CHILD = 12
ATTEMPTS = 0             # HTTP attempts made
STATUS_CLASS = 1         # 1xx .. 5xx at 1 .. 5
REQUEST_ERRORS = 6       # attempts with no HTTP status: connection errors and timeouts
DURATION_SUM = 7         # microseconds
DURATION_COUNT = 8
BUCKETS = 9
QUEUE_OUTCOMES = BUCKETS + len(DURATION_BUCKETS)
COUNTER_COUNT = QUEUE_OUTCOMES + len(OUTCOMES) * MAX_QUEUES_PER_CHILD
COUNTERS = struct.Struct(f"<{COUNTER_COUNT}Q")
assert COUNTERS_OFFSET >= ACTIVITY_OFFSET + SLOT_ACTIVITY.size
assert COUNTERS_OFFSET + COUNTERS.size <= SLOT_SIZE

FREE, STARTING, IDLE, BUSY, DRAINING, BACKOFF = range(6)
STATE_NAMES = {FREE: "free", STARTING: "starting", IDLE: "idle", BUSY: "busy",
               DRAINING: "draining", BACKOFF: "backing off"}


def store(buffer, offset, structure, *values):
    """Write ``values`` packed with ``structure`` at ``offset`` in one slice assignment.

    ``struct.pack_into`` zero-fills its target before writing the values, so a
    process reading the scoreboard at that moment could see a zero heartbeat
    or a free slot. A slice assignment copies the new bytes over the old ones.
    """
    buffer[offset:offset + structure.size] = structure.pack(*values)


def job_key(server, handle, unique):
    """Return 16 bytes that identify a job across job servers.

    A handle alone is not enough: two gearmand on one host, or one gearmand
    after a restart, hand out the same handles.
    """
    return hashlib.blake2b(b"\0".join((server, handle, unique)), digest_size=16).digest()


def remove_stale(directory):
    """Remove scoreboards left by supervisors that died with their children; return how many."""
    removed = 0
    for name in os.listdir(directory):
        prefix, _, rest = name.partition(".")
        pid_text, _, suffix = rest.partition(".")
        if prefix != "curlerd" or suffix != "scoreboard" or not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed += 1
        except OSError:
            pass
    return removed


def default_path(pid):
    directory = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    return os.path.join(directory, f"curlerd.{pid}.scoreboard")


class SlotView:
    """A snapshot of one slot, as the supervisor or ``curlerd status`` reads it."""

    __slots__ = ("index", "pid", "state", "started", "heartbeat", "job_started", "jobs_done",
                 "handle", "method", "queue", "job_key", "counters")

    def __init__(self, index, buffer):
        offset = SLOTS_OFFSET + index * SLOT_SIZE
        self.index = index
        (self.pid,) = SLOT_PID.unpack_from(buffer, offset)
        (self.state,) = SLOT_STATE.unpack_from(buffer, offset + STATE_OFFSET)
        (self.started,) = SLOT_STARTED.unpack_from(buffer, offset + STARTED_OFFSET)
        heartbeat, job_started, jobs_done, handle, method, queue, key = SLOT_ACTIVITY.unpack_from(
            buffer, offset + ACTIVITY_OFFSET)
        self.job_key = key
        self.heartbeat = heartbeat
        self.job_started = job_started
        self.jobs_done = jobs_done
        self.handle = handle.rstrip(b"\0").decode("utf-8", "replace")
        self.method = method.rstrip(b"\0").decode("utf-8", "replace")
        self.queue = queue.rstrip(b"\0").decode("utf-8", "replace")
        self.counters = COUNTERS.unpack_from(buffer, offset + COUNTERS_OFFSET)

    @property
    def state_name(self):
        return STATE_NAMES.get(self.state, str(self.state))


class Scoreboard:
    """The shared file, mapped once in the supervisor and inherited by every child."""

    def __init__(self, path, create=False):
        self.path = path
        size = SLOTS_OFFSET + SLOT_SIZE * SLOT_COUNT
        if create:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(fd, size)
        else:
            fd = os.open(path, os.O_RDONLY)
        try:
            access = mmap.ACCESS_WRITE if create else mmap.ACCESS_READ
            self.map = mmap.mmap(fd, size, access=access)
        finally:
            os.close(fd)
        if create:
            store(self.map, 0, HEADER, MAGIC, 0, 0)
        elif HEADER.unpack_from(self.map, 0)[0] != MAGIC:
            raise ValueError(f"{path} is not a curlerd scoreboard")

    def close(self):
        self.map.close()

    def remove(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    # -- supervisor side ----------------------------------------------------

    def claim(self, index, pid, now):
        """Reset slot ``index`` for a new child ``pid``; pass 0 before the fork and call set_pid after it."""
        offset = SLOTS_OFFSET + index * SLOT_SIZE
        self.map[offset:offset + SLOT_SIZE] = bytes(SLOT_SIZE)
        store(self.map, offset, SLOT_PID, pid)
        store(self.map, offset + STATE_OFFSET, SLOT_STATE, STARTING)
        store(self.map, offset + STARTED_OFFSET, SLOT_STARTED, now)
        store(self.map, offset + ACTIVITY_OFFSET, SLOT_ACTIVITY, now, 0.0, 0, b"", b"", b"", b"")

    def set_pid(self, index, pid):
        """Record the pid of the child that took slot ``index``; the slot counts as in use from now on."""
        store(self.map, SLOTS_OFFSET + index * SLOT_SIZE, SLOT_PID, pid)

    def free(self, index):
        offset = SLOTS_OFFSET + index * SLOT_SIZE
        store(self.map, offset, SLOT_PID, 0)
        store(self.map, offset + STATE_OFFSET, SLOT_STATE, FREE)

    def read(self, index):
        return SlotView(index, self.map)

    def slots(self):
        """Yield a view of every slot in use."""
        for index in range(SLOT_COUNT):
            offset = SLOTS_OFFSET + index * SLOT_SIZE
            if SLOT_PID.unpack_from(self.map, offset)[0]:
                yield SlotView(index, self.map)

    def record_crashes(self, key, crashes):
        """Set the crash count of a job key; a new key replaces the oldest entry when the table is full."""
        _, generation, written = HEADER.unpack_from(self.map, 0)
        for index in range(min(written, CRASH_CAPACITY)):
            if self.crash_entry(index)[0] == key:
                break
        else:
            index = written % CRASH_CAPACITY
            written += 1
        store(self.map, CRASH_OFFSET + CRASH_ENTRY * (1 + index), CRASH_RECORD, key, crashes)
        store(self.map, 0, HEADER, MAGIC, generation + 1, written)

    def crash_entry(self, index):
        return CRASH_RECORD.unpack_from(self.map, CRASH_OFFSET + CRASH_ENTRY * (1 + index))

    # -- child side -----------------------------------------------------------

    def crash_generation(self):
        return HEADER.unpack_from(self.map, 0)[1]

    def crash_counts(self):
        """Return ``{job key: crashes}`` as the supervisor last wrote them."""
        _, _, written = HEADER.unpack_from(self.map, 0)
        return dict(self.crash_entry(index) for index in range(min(written, CRASH_CAPACITY)))

    def holders(self, key, own_index):
        """Count the other slots that show ``key`` in hand.

        A slot stays in use until the supervisor reaps its child, and its crash
        is counted at that moment. So a dead child that held the job, but whose
        crash is not in the crash table yet, is among these holders.
        """
        count = 0
        for index in range(SLOT_COUNT):
            if index == own_index:
                continue
            offset = SLOTS_OFFSET + index * SLOT_SIZE
            if self.map[offset + STATE_OFFSET] in (BUSY, BACKOFF) and \
                    self.map[offset + KEY_OFFSET:offset + KEY_OFFSET + 16] == key:
                count += 1
        return count


class SlotWriter:
    """A child's handle on its own slot: cheap writes around each job."""

    def __init__(self, scoreboard, index, clock):
        self.map = scoreboard.map
        self.offset = SLOTS_OFFSET + index * SLOT_SIZE
        self.clock = clock
        self.jobs_done = 0
        self.counters = [0] * COUNTER_COUNT

    def count_attempt(self, status):
        counters = self.counters
        counters[ATTEMPTS] += 1
        if status is None:
            counters[REQUEST_ERRORS] += 1
        elif 100 <= status < 600:
            counters[STATUS_CLASS + status // 100 - 1] += 1

    def count_job(self, queue_index, outcome, seconds, retried):
        """Add one finished job to the counters and publish them."""
        counters = self.counters
        counters[DURATION_SUM] += int(seconds * 1e6)
        counters[DURATION_COUNT] += 1
        for index, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                counters[BUCKETS + index] += 1
                break
        if queue_index < MAX_QUEUES_PER_CHILD:
            base = QUEUE_OUTCOMES + queue_index * len(OUTCOMES)
            counters[base + outcome] += 1
            if retried:
                counters[base + RETRIED] += 1
        store(self.map, self.offset + COUNTERS_OFFSET, COUNTERS, *counters)

    def set_state(self, state):
        store(self.map, self.offset + STATE_OFFSET, SLOT_STATE, state)
        self.beat()

    def beat(self):
        store(self.map, self.offset + ACTIVITY_OFFSET, HEARTBEAT, self.clock())

    def busy(self, handle, method, queue, key):
        now = self.clock()
        store(self.map, self.offset + ACTIVITY_OFFSET, SLOT_ACTIVITY, now, now, self.jobs_done,
              handle, method.encode("utf-8", "replace")[:128], queue, key)
        store(self.map, self.offset + STATE_OFFSET, SLOT_STATE, BUSY)

    def idle(self):
        self.jobs_done += 1
        store(self.map, self.offset + ACTIVITY_OFFSET, SLOT_ACTIVITY, self.clock(), 0.0, self.jobs_done,
              b"", b"", b"", b"")
        store(self.map, self.offset + STATE_OFFSET, SLOT_STATE, IDLE)
