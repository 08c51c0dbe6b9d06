"""Live progress on the driver, the history plot and the TensorBoard logs."""

from __future__ import annotations

import io
import socket
import time

import pytest
from conftest import array_frame, binary_model, separable

from sparkeras import SparkKerasEstimator, plot_history
from sparkeras.progress import ProgressDisplay, ProgressServer

WIDTH = 10


def test_events_arrive_while_the_training_job_runs(spark, monkeypatch, tmp_path):
    features, labels = separable(3000, WIDTH)
    frame = array_frame(spark, features, labels)
    received = []
    tracker = spark.sparkContext.statusTracker()
    original = ProgressDisplay.__call__

    def record(display, event):
        # Which Spark jobs run when the event reaches the driver: the training job, if live.
        received.append((event, tracker.getActiveJobsIds()))
        original(display, event)

    monkeypatch.setattr(ProgressDisplay, "__call__", record)
    fitted = SparkKerasEstimator(
        model=binary_model(WIDTH),
        numWorkers=2,
        epochs=2,
        batchSize=32,
        verbose=1,
        logDir=str(tmp_path / "logs"),
    ).fit(frame)
    kinds = [event["kind"] for event, _ in received]
    assert kinds.count("epoch_begin") == 2 and kinds.count("epoch_end") == 2
    assert "step" in kinds
    during_training = [event for event, active in received if active]
    assert any(event["kind"] == "step" for event in during_training)
    ends = [event for event, _ in received if event["kind"] == "epoch_end"]
    assert [event["epoch"] for event in ends] == [1, 2]
    assert ends[-1]["logs"]["loss"] == pytest.approx(fitted.history["loss"][-1], rel=1e-6)
    # The chief wrote TensorBoard event files.
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))


def test_one_line_per_epoch_with_verbose_two():
    stream = io.StringIO()
    display = ProgressDisplay(2, stream)
    display({"kind": "epoch_begin", "epoch": 1, "epochs": 2})
    display({"kind": "step", "epoch": 1, "epochs": 2, "step": 5, "steps": 10, "logs": {}})
    display(
        {
            "kind": "epoch_end",
            "epoch": 1,
            "epochs": 2,
            "step": 10,
            "steps": 10,
            "logs": {"loss": 0.5},
        }
    )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert (
        lines[0].startswith("Epoch 1/2 - [====================] 10/10")
        and "loss: 0.5000" in lines[0]
    )
    silent = io.StringIO()
    ProgressDisplay(0, silent)({"kind": "epoch_end", "epoch": 1, "epochs": 1, "logs": {}})
    assert silent.getvalue() == ""


def test_epochs_are_printed_at_the_end_when_no_live_progress_arrived(spark, monkeypatch, capsys):
    """A chief that cannot reach the driver (a firewall, an unresolvable driver host)."""
    import contextlib

    from sparkeras import progress

    @contextlib.contextmanager
    def unreachable(spark, display):
        yield "127.0.0.1:9", "secret"  # the discard port: nothing listens there

    monkeypatch.setattr(progress, "progress_channel", unreachable)
    features, labels = separable(600, WIDTH)
    fitted = SparkKerasEstimator(
        model=binary_model(WIDTH), numWorkers=2, epochs=2, batchSize=60, verbose=2
    ).fit(array_frame(spark, features, labels))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch ")]
    assert [line.split(" - ")[0] for line in lines] == ["Epoch 1/2", "Epoch 2/2"]
    assert f"loss: {fitted.history['loss'][-1]:.4f}" in lines[-1]


def test_the_progress_server_ignores_connections_without_the_secret():
    events = []
    with ProgressServer("localhost", events.append) as server:
        port = int(server.address.rsplit(":", 1)[1])
        with socket.create_connection(("localhost", port)) as intruder:
            intruder.sendall(b"wrong-secret\n" + b'{"kind": "epoch_end"}\n')
        with socket.create_connection(("localhost", port)) as chief:
            chief.sendall(server.secret.encode() + b"\n" + b'{"kind": "epoch_begin", "epoch": 1}\n')
        deadline = time.monotonic() + 5
        while not events and time.monotonic() < deadline:
            time.sleep(0.05)
    assert events == [{"kind": "epoch_begin", "epoch": 1}]


def test_plot_history_writes_a_png(tmp_path):
    import matplotlib

    history = {"loss": [0.7, 0.4, 0.3], "val_loss": [0.8, 0.5, 0.45], "accuracy": [0.5, 0.8, 0.9]}
    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # as a user's own choice
    try:
        figure = plot_history(history, str(tmp_path / "history.png"))
        assert matplotlib.get_backend() == "svg"  # left alone
    finally:
        matplotlib.use(backend)
    assert (tmp_path / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [axis.get_title() for axis in figure.axes] == ["loss", "accuracy"]  # loss first
    assert len(figure.axes[0].lines) == 2  # train and validation
    with pytest.raises(ValueError, match="history is empty"):
        plot_history({})
