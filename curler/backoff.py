"""Respawn backoff: how long to wait before replacing a child that keeps dying soon after start."""

# A child that ran at least this many seconds was healthy, and resets the backoff.
HEALTHY_UPTIME = 10.0
MIN_DELAY = 1.0
MAX_DELAY = 60.0
# The exponent stops growing here, so a crash loop of any length cannot overflow a float.
MAX_DOUBLINGS = 32


def respawn_delay(failures):
    """Return the seconds to wait after ``failures`` quick exits in a row: 0, then 1, 2, 4 ... up to 60."""
    if failures <= 0:
        return 0.0
    return min(MAX_DELAY, MIN_DELAY * 2 ** min(failures - 1, MAX_DOUBLINGS))


class RespawnBackoff:
    """The backoff state of one child position: 1 s, 2 s, 4 s ... up to 60 s, reset by a healthy run."""

    def __init__(self):
        self.failures = 0
        self.next_start = 0.0

    def ready(self, now):
        return now >= self.next_start

    def record_exit(self, uptime, now, healthy=False):
        """Record a child's exit after ``uptime`` seconds; return the delay before its replacement starts.

        A healthy exit, or one after HEALTHY_UPTIME seconds, resets the
        backoff and returns 0.
        """
        if healthy or uptime >= HEALTHY_UPTIME:
            self.failures = 0
            self.next_start = now
            return 0.0
        self.failures += 1
        delay = respawn_delay(self.failures)
        self.next_start = now + delay
        return delay
