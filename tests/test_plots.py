"""curves.png: what the trainer draws after each evaluation, from metrics.jsonl's records."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt

from xmtc.plots import curves_figure, main, read_records, write_curves


def record(split, step, loss, p1, f1, **extra):
    return {"split": split, "step": step, "train_loss": loss, "P@1": p1, "nDCG@1": p1, "P@3": p1 / 2,
            "micro_precision": f1 + 0.1, "micro_recall": f1 - 0.1, "micro_f1": f1, **extra}


def lines(ax) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_curves_draw_the_records(tmp_path):
    records = [record("valid", 5, 3.0, 0.2, 0.1), record("valid", 10, 2.0, 0.5, 0.3), record("valid", 15, 1.5, 0.4, 0.35),
               record("test", 15, 1.5, 0.45, 0.33, selected_step=10)]
    fig = curves_figure(records)
    loss, ranking, sets = fig.axes
    assert lines(loss)["_child0"] == ([5, 10, 15], [3.0, 2.0, 1.5])
    drawn = lines(ranking)
    assert drawn["P@1 (valid)"] == ([5, 10, 15], [0.2, 0.5, 0.4]) and drawn["P@3 (valid)"][1] == [0.1, 0.25, 0.2]
    assert [label for label in drawn if not label.startswith("_")] == ["P@1 (valid)", "P@3 (valid)", "nDCG@1 (valid)", "test, at the end (at the selected step)"]
    stars = [xy for label, xy in drawn.items() if label.startswith("_") and xy[0]]
    assert ([10], [0.45]) in stars  # the test score of the selected weights, at the selected step
    assert lines(sets)["micro_f1 (valid)"] == ([5, 10, 15], [0.1, 0.3, 0.35])
    plt.close(fig)
    # With the training log (a record per log step) the loss panel draws its steps, not only the evaluations'.
    log = [{"step": s, "train_loss": 4.0 - s / 10} for s in range(3, 16, 3)] + [{"step": 16, "train_loss": float("nan")}]
    fig = curves_figure(records, train_records=log)
    assert lines(fig.axes[0])["_child0"] == ([3, 6, 9, 12, 15], [3.7, 3.4, 3.1, 2.8, 2.5])
    plt.close(fig)
    # Without a validation split the periodic test evaluations are one dashed curve, the last one included.
    fig = curves_figure([record("test", 5, 3.0, 0.2, 0.1), record("test", 10, 2.0, float("nan"), 0.3)])
    assert lines(fig.axes[1])["P@1 (test)"] == ([5], [0.2]) and lines(fig.axes[2])["micro_f1 (test)"] == ([5, 10], [0.1, 0.3])
    plt.close(fig)


def test_write_curves_and_the_command(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert not write_curves([], run / "curves.png") and main(["--run", str(run)]) == 2
    assert capsys.readouterr().err == f"error: {run / 'metrics.jsonl'} holds no evaluation to draw\n"
    (run / "metrics.jsonl").write_text(json.dumps(record("test", 5, 3.0, 0.2, 0.1)) + "\n" + '{"split": "te')  # a cut line
    assert len(read_records(run / "metrics.jsonl")) == 1
    assert main(["--run", str(run)]) == 0
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(run.glob(".*tmp*"))
    (run / "train_log.jsonl").mkdir()  # an unreadable training log: the evaluations' losses are drawn instead
    assert main(["--run", str(run)]) == 0


def test_the_command_says_what_it_cannot_read_or_write_in_one_sentence(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(record("test", 5, 3.0, 0.2, 0.1)) + "\n")
    (tmp_path / "file").write_text("not a directory")
    # --run naming a file (a typo), a metrics.jsonl that is a directory, an --out under a file: a traceback each.
    assert main(["--run", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'file' / 'metrics.jsonl'} could not be read: Not a directory; pass the run's output directory\n"
    (tmp_path / "dir" / "metrics.jsonl").mkdir(parents=True)
    assert main(["--run", str(tmp_path / "dir")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'dir' / 'metrics.jsonl'} could not be read: Is a directory")
    assert main(["--run", str(run), "--out", str(tmp_path / "file" / "curves.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {tmp_path / 'file' / 'curves.png'} could not be written: ") and err.count("\n") == 1, err
