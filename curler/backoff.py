"""Respawn backoff: how long to wait before replacing a child that keeps dying soon after start."""

# A child that ran at least this many seconds was healthy, and resets the backoff.
HEALTHY_UPTIME = 10.0
MIN_DELAY = 1.0
MAX_DELAY = 60.0


class RespawnBackoff:
    """The backoff state of one child position: 1 s, 2 s, 4 s ... up to 60 s, reset by a healthy run."""

    def __init__(self):
        self.failures = 0
        self.next_start = 0.0

    def ready(self, now):
        return now >= self.next_start

    def record_exit(self, uptime, now, clean=False):
        """Record a child's exit; return the delay before its replacement starts (0 for none)."""
        if clean or uptime >= HEALTHY_UPTIME:
            self.failures = 0
            self.next_start = now
            return 0.0
        self.failures += 1
        delay = min(MAX_DELAY, MIN_DELAY * 2 ** (self.failures - 1))
        self.next_start = now + delay
        return delay
