"""One-call plots of a training history (``fitted.history``, ``KerasClassifier.history_``)."""

from __future__ import annotations

from typing import Any


def plot_history(history: dict[str, list[float]], path: str | None = None) -> Any:
    """Plot the loss and every metric per epoch, training and validation side by side.

    Parameters
    ----------
    history : dict
        Metric name -> one value per epoch, as in ``SparkKerasModel.history``; ``val_*`` entries
        are drawn in the panel of their training metric.
    path : str, optional
        Write the figure there (PNG by default, any format matplotlib knows by extension).

    Returns
    -------
    matplotlib.figure.Figure
        The figure; a notebook shows it when it is the cell's result.

    Examples
    --------
    >>> from sparkeras import plot_history
    >>> plot_history(fitted.history, "history.png")  # doctest: +SKIP
    """
    # A Figure made without pyplot needs no backend, so the user's (a notebook's, Tk's) is left
    # alone, and writing a file needs no display.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = [name for name in history if not name.startswith("val_")]
    names += [name[4:] for name in history if name.startswith("val_") and name[4:] not in history]
    names.sort(key=lambda name: name != "loss")  # the loss first, then the metrics
    if not names:
        raise ValueError("The history is empty: there is nothing to plot.")
    figure = Figure(figsize=(4.5 * len(names), 3.4), layout="constrained")
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for axis, name in zip(axes, names, strict=True):
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            values = history.get(key)
            if values:
                axis.plot(range(1, len(values) + 1), values, marker="o", label=label)
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend()
        axis.grid(alpha=0.3)
    if path is not None:
        figure.savefig(path)
    return figure
