"""Dead letters: jobs that failed for good, kept on a Gearman queue for an operator to see and replay."""

import base64
import datetime
import json
import logging

from . import gearman

log = logging.getLogger("curler.deadletter")

# Dead letters are never picked up by curlerd itself unless a worker is pointed at
# their queue; ``curlerd replay-dead-letters`` drains them with a plain worker.
REPLAY_IDLE_SECONDS = 5.0


def build(job, url, reason, status, attempts, now=None):
    """Return the JSON dead letter for ``job`` as bytes.

    The original payload is kept as text when it is UTF-8, otherwise as base64
    with ``payload_base64`` set to true.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    try:
        payload, encoded = job.workload.decode("utf-8"), False
    except UnicodeDecodeError:
        payload, encoded = base64.b64encode(job.workload).decode("ascii"), True
    letter = {
        "payload": payload,
        "payload_base64": encoded,
        "queue": job.function.decode("utf-8", "replace"),
        "job_handle": job.handle.decode("utf-8", "replace"),
        "unique": job.unique.decode("utf-8", "replace"),
        "url": url,
        "status": status,
        "error": reason,
        "attempts": attempts,
        "failed_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return json.dumps(letter, ensure_ascii=False).encode("utf-8")


def original_payload(letter):
    """Return the original job's payload bytes from a parsed dead letter."""
    if letter.get("payload_base64"):
        return base64.b64decode(letter["payload"])
    return letter["payload"].encode("utf-8")


def letter_method(letter):
    """Return the method of the original payload, or None when it has none."""
    try:
        payload = json.loads(original_payload(letter))
    except (ValueError, UnicodeDecodeError):
        return None
    method = payload.get("method") if isinstance(payload, dict) else None
    return method if isinstance(method, str) else None


def queued_letters(servers, dead_letter_queue):
    """Return how many jobs ``dead_letter_queue`` contains across the job servers that reply."""
    total = 0
    errors = []
    for server in servers:
        try:
            total += gearman.server_status(server).get(dead_letter_queue, (0, 0, 0))[0]
        except (OSError, gearman.GearmanError) as error:
            errors.append(f"{gearman.format_server(server)}: {error}")
    if len(errors) == len(servers):
        raise gearman.GearmanError("no job server replied (" + "; ".join(errors) + ")")
    for error in errors:
        log.warning("dead letters on %s not counted: %s", dead_letter_queue, error)
    return total


def replay(servers, dead_letter_queue, method=None, idle_seconds=REPLAY_IDLE_SECONDS):
    """Move dead letters from ``dead_letter_queue`` back to their original queues.

    Each letter is submitted to its queue before it is completed, so a crash
    in between duplicates a job rather than losing it. With ``method``, other
    letters are held until the end and then released, which makes gearmand
    queue them again. At most the letters queued at the start are taken, so
    letters of jobs that fail again during the replay wait for the next one.
    Returns ``(moved, kept)``; raises GearmanError when no job server replies.
    """
    moved = kept = 0
    backlog = queued_letters(servers, dead_letter_queue)
    worker = gearman.Worker(servers, [dead_letter_queue], client_id="curler-replay")
    client = gearman.Client(servers)
    try:
        for _ in range(backlog):
            job = worker.grab_job(idle_seconds)
            if job is None:
                break
            try:
                letter = json.loads(job.workload)
            except ValueError:
                log.warning("dead letter %s is not JSON; left on %s", job.handle.decode(), dead_letter_queue)
                kept += 1
                continue
            if method is not None and letter_method(letter) != method:
                kept += 1
                continue
            client.submit_background(letter["queue"], original_payload(letter), unique=letter.get("unique", ""))
            worker.complete(job)
            worker.flush(job)
            moved += 1
    finally:
        worker.close()
        client.close()
    return moved, kept
