"""Ctrl-C during training: finish the step in progress, save, then stop.

A KeyboardInterrupt raised in the middle of a step would leave a GAN with its
discriminator updated and its generator not, and the run would lose everything since the
last epoch's checkpoint. Instead the first Ctrl-C only asks the loop to stop at the next
step boundary, where the trainer writes a checkpoint (resume then continues exactly there)
and raises TrainingInterrupted. A second Ctrl-C interrupts at once, as usual: the previous
checkpoint stays intact, since checkpoints are written atomically."""

import contextlib
import signal
import threading


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped fit() between two steps, after a checkpoint of the last one."""

    def __init__(self, step: int, checkpoint, epochs_left: int = 0):
        # (A resume trains config.epochs more, the one in progress counted as one.)
        then = (f"to finish the planned epochs, resume with epochs={epochs_left} (config.epochs, then "
                f"fit(resume=True); aigc-fast train ... --resume RUN_DIR --epochs {epochs_left})" if epochs_left
                else "its planned training was done")
        super().__init__(f"training stopped by Ctrl-C after step {step}; the checkpoint {checkpoint} holds it; {then}")
        self.step = step
        self.checkpoint = checkpoint
        self.epochs_left = epochs_left  # of the stopped fit(), the one in progress counted as one


class StopRequest:
    requested = False


@contextlib.contextmanager
def stop_between_steps(enabled: bool = True):
    """Yields a StopRequest whose `requested` the first SIGINT sets. Inactive (Ctrl-C
    raises KeyboardInterrupt where it lands) when not enabled (the trainers turn it off
    under DDP, where every process would have to agree on the step), outside the main
    thread (where Python cannot install a signal handler), when SIGINT's current handler
    was not installed from Python (it could not be put back), or when SIGINT is ignored
    (SIG_IGN: a shell starts background jobs so, and Ctrl-C must not reach them; Python
    itself installs no handler then)."""
    request = StopRequest()
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if not enabled or previous is None or previous == signal.SIG_IGN:
        yield request
        return

    def ask_to_stop(signum, frame):
        request.requested = True
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C acts at once

    signal.signal(signal.SIGINT, ask_to_stop)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)
