"""How long a run trains and when it looks at val: the step budget, --val-interval, the stops."""

from dataclasses import replace

from tinyssd.config import TrainConfig
from tinyssd.engine.schedule import epochs_for, should_stop, validates


def test_the_step_budget_raises_small_sets_and_caps_large_ones():
    cfg = TrainConfig().resolved()  # 40 epochs, 500..4000 steps
    assert epochs_for(cfg, 5) == 100  # a 130-image set at batch 32
    assert epochs_for(cfg, 32) == 40  # the bananas
    assert epochs_for(cfg, 313) == 12  # 10,000 images
    assert epochs_for(TrainConfig(epochs=3).resolved(), 5) == 3


def test_val_interval_auto_evaluates_long_runs_at_intervals_and_the_last_tenth():
    def evaluated(epochs, interval=0):
        return [e for e in range(1, epochs + 1) if validates(e, epochs, interval)]

    assert evaluated(40) == list(range(1, 41))  # up to 50 epochs: every one
    long = evaluated(143)  # 143 epochs: every 3rd, then each of the last 14
    assert long[:3] == [3, 6, 9] and long[-15:] == [129] + list(range(130, 144))
    assert len(long) == 57
    assert evaluated(10, interval=4) == [4, 8, 10]  # explicit: every 4th, and the last
    assert evaluated(10, interval=1) == list(range(1, 11))


def test_patience_stops_when_val_ap_has_not_improved_for_that_many_epochs():
    cfg = replace(TrainConfig(out="unused").resolved(), patience=2)
    history = [{"epoch": e + 1, "val_AP": ap} for e, ap in enumerate([0.1, 0.3, 0.3, 0.2])]
    assert not should_stop(cfg, history[2], history[:3])  # 1 epoch since the best (epoch 2)
    assert should_stop(cfg, history[3], history)  # 2 epochs since: stop
    assert not should_stop(replace(cfg, patience=0), history[3], history)  # 0: never
    no_val = [{"epoch": e + 1} for e in range(5)]
    assert not should_stop(cfg, no_val[-1], no_val)  # without a val set nothing is measured
    # --val-interval: an epoch without val never stops the run; the next evaluated one does
    skipped = [*history, {"epoch": 5}]
    assert not should_stop(cfg, skipped[-1], skipped)
    assert should_stop(cfg, {"epoch": 6, "val_AP": 0.2}, [*skipped, {"epoch": 6, "val_AP": 0.2}])
