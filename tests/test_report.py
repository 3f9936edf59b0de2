"""``niff-report`` as a user runs it (in-process via ``main``): reference checkpoints measured as an independent
computation measures them, readable figures, and every user mistake as one clear line with nothing written."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from kernel_reference import filter_layer_sizes, impulse_kernels, shares
from PIL import Image
from reference_vectors import vectors
from torch import nn

import niff
from niff import digits
from niff.layers import FreqConv1x1
from niff_export.errors import ExportError
from niff_export.report import analyse_model, report_model
from niff_export.report.analysis import OVERSIZED_NOTE
from niff_export.report.cli import main
from niff_export.report.figures import _layer_style, error_figure, figures, kernels_figure, wrap_name
from niff_export.report.markdown import render

MODELS = [g for g in vectors() if not g.is_layer]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("niff-report: error:")]


@pytest.mark.parametrize("golden", MODELS, ids=lambda g: g.meta["arch"])
def test_reference_checkpoints_match_an_independent_computation(golden, tmp_path, capsys):
    data = golden.load()
    checkpoint = tmp_path / f"{golden.meta['arch']}.pt"
    torch.save(data["state_dict"], checkpoint)
    assert main([str(checkpoint), "--size", "32", "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["size"] == 32

    model = niff.load_checkpoint(checkpoint)
    expected = filter_layer_sizes(model, torch.zeros(1, 3, 32, 32))
    assert [layer["name"] for layer in report["layers"]] == list(expected)
    for layer in report["layers"]:
        module, n = expected[layer["name"]]
        kernels = impulse_kernels(module, n)
        mass = shares(kernels)
        assert layer["map_size"] == n and layer["kernels"] == len(kernels)
        assert layer["kind"] == ("depthwise" if module.__class__.__name__ == "FreqConvDW" else "full")
        assert np.abs(np.array(layer["mass_ratio"]) - mass.mean(0)).max() <= 1e-4
        assert np.abs(np.array(layer["mass_ratio_std"]) - mass.std(0)).max() <= 1e-4
        assert np.abs(np.array(layer["energy_ratio"]) - shares(kernels, 2).mean(0)).max() <= 1e-4
    assert "measuring" in capsys.readouterr().err


@pytest.fixture(scope="module")
def digits_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits_report")
    result = report_model(niff.load_checkpoint(digits.DEFAULT_CHECKPOINT), digits.INPUT_SIZE, out, name="digits")
    return result


def test_report_files(digits_report):
    names = {path.name for path in digits_report.files}
    assert names == {
        "report.json",
        "report.md",
        "kernel_mass.png",
        "spectral_error.png",
        "kernels.png",
        "effective_kernels.png",
    }
    for path in digits_report.files:
        if path.suffix == ".png":
            with Image.open(path) as image:
                assert image.format == "PNG" and image.width >= 600 and image.height >= 150
    markdown = (digits_report.path / "report.md").read_text()
    for name in names - {"report.md", "report.json"}:
        assert name in markdown
    for stats in digits_report.report.layers:
        assert f"`{stats.layer}`" in markdown
    record = json.loads((digits_report.path / "report.json").read_text())
    first = record["layers"][0]
    assert first["name"] == "layer1.0.conv1.0" and first["kernel_sizes"][:3] == [1, 3, 5]
    assert len(first["mass_ratio"]) == len(first["kernel_sizes"]) == len(first["spectral_error"])
    assert first["mass_ratio"][-1] == pytest.approx(1.0) and first["spectral_error"][-1] == pytest.approx(0.0)


def _texts(figure) -> list[str]:
    texts = [t.get_text() for t in figure.findobj(lambda o: hasattr(o, "get_text"))]
    return [t for t in texts if t]


def test_figures_carry_titles_axes_and_stage_names(digits_report):
    report = digits_report.report
    drawn = figures(report)
    stage_labels = [stage.label for stage in report.stages]
    assert stage_labels[0] == "32x32 maps (2 layers, 32 kernels)"
    for name in ("kernel_mass.png", "spectral_error.png"):
        texts = _texts(drawn[name])
        assert any("digits at 32x32" in t for t in texts)
        for ax in drawn[name].axes:
            assert ax.get_title() and ax.get_xlabel().startswith("kernel size K") and ax.get_ylabel()
    for ax in drawn["kernel_mass.png"].axes:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == stage_labels
    # One panel per stage, titled with it.
    assert [ax.get_title().split(";")[0] for ax in drawn["spectral_error.png"].axes] == stage_labels
    kernel_rows = [ax.get_ylabel() for ax in drawn["kernels.png"].axes if ax.get_ylabel()]
    # Row labels are the layer's name wrapped at dots, then the map size.
    assert ["".join(row.split("\n")[:-1]) for row in kernel_rows] == [stage.layers[0].layer for stage in report.stages]
    (ax,) = drawn["effective_kernels.png"].axes
    cells = [cell.get_text().get_text() for cell in ax.tables[0].get_celld().values()]
    assert all(s.layer in cells for s in report.layers) and "K @ 90%" in cells and "effective kernel" in ax.get_title()


def test_help():
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0


def test_checkpoint_without_niff_layers(tmp_path, capsys):
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    plain(torch.zeros(1, 3, 16, 16))
    checkpoint = tmp_path / "plain.pt"
    torch.save(plain.state_dict(), checkpoint)
    assert main([str(checkpoint), "--size", "32", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert _errors(err) == [
        f"niff-report: error: {checkpoint} holds no NIFF layers (no frequency-filter weights "
        "'mlp_real', 'mlp_imag' or 'mlp'): it is not a NIFF checkpoint"
    ]
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_model_with_only_pointwise_layers(tmp_path):
    with pytest.raises(ExportError, match="no NIFF filter layers"):
        report_model(nn.Sequential(nn.Conv2d(3, 4, 1), FreqConv1x1(4, 4)), 16, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "32", "--arch", "resnet34_split"], "does not fit resnet34_split"),
        (
            ["--size", "32", "--ema"],
            "the checkpoint has no EMA weights (looked for model_ema, state_dict_ema, ema); leave out --ema for its "
            "model weights",
        ),
    ],
    ids=["wrong-arch", "ema"],
)
def test_user_mistakes(args, message, tmp_path, capsys):
    assert main([str(digits.DEFAULT_CHECKPOINT), *args, "--out", str(tmp_path / "out")]) == 1
    (error,) = _errors(capsys.readouterr().err)
    assert message in error
    assert not (tmp_path / "out").exists()


def test_a_size_below_the_minimum_is_a_usage_error(tmp_path, capsys):
    """Checked by the same rule as niff-export's --size, before the checkpoint is read."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(digits.DEFAULT_CHECKPOINT), "--size", "4", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "the input size must be an integer of at least 8 pixels, got 4" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("below", [False, True], ids=["file", "folder-in-a-file"])
def test_an_out_path_that_is_a_file_is_refused_before_measuring(tmp_path, capsys, below):
    taken = tmp_path / "README.md"
    taken.write_text("a file, not a folder")
    out = taken / "report" if below else taken
    assert main([str(digits.DEFAULT_CHECKPOINT), "--size", "32", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    what = f"{taken} is" if below else "it is"
    assert _errors(err) == [f"niff-report: error: cannot write the report to {out}: {what} a file, not a folder"]
    assert "measuring" not in err and "Traceback" not in err
    assert taken.read_text() == "a file, not a folder"


def test_missing_checkpoint(tmp_path, capsys):
    assert main([str(tmp_path / "absent.pt"), "--size", "32", "--out", str(tmp_path / "out")]) == 1
    assert _errors(capsys.readouterr().err) == [
        f"niff-report: error: no such checkpoint file: {tmp_path / 'absent.pt'}"
    ]


def test_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([str(digits.DEFAULT_CHECKPOINT), "--size", "32", "--out", str(tmp_path / "out")]) == 1
    (error,) = _errors(capsys.readouterr().err)
    assert "pip install 'niff-deploy[report]'" in error
    assert not (tmp_path / "out").exists()


def test_analysis_without_writing():
    report = analyse_model(niff.load_checkpoint(digits.DEFAULT_CHECKPOINT), 32)
    assert [s.map_size for s in report.layers] == [32, 32, 16, 8, 4]
    assert report.to_dict()["layers"][2]["effective_kernel"]["0.9"] == report.layers[2].effective_kernel(0.9)


# Legibility, checked on the figure objects after an Agg draw, without looking at pixels.


def _drawn_texts(figure) -> list:
    """(text, window extent) of every visible non-empty text after a draw: titles, axis and tick labels,
    legend entries and titles, figure texts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = [figure._suptitle, *figure.texts]
    for ax in figure.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            ticks = axis.get_major_ticks(len(axis.get_majorticklocs()))
            texts += [tick.label1 for tick in ticks if low <= tick.get_loc() <= high and tick.label1.get_visible()]
        legend = ax.get_legend()
        if legend is not None:
            texts += [*legend.get_texts(), legend.get_title()]
    unique = list({id(t): t for t in texts if t is not None and t.get_text()}.values())
    return [(t.get_text(), t.get_window_extent(renderer)) for t in unique]


def _overlap(a, b, slack: float = 0.5) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > slack and min(a.y1, b.y1) - max(a.y0, b.y0) > slack


def assert_legible(figure) -> None:
    """No two texts overlap, no text covers a plotting area, and every text lies inside the figure."""
    texts = _drawn_texts(figure)
    areas = [ax.bbox for ax in figure.axes if ax.get_visible()]
    frame = figure.bbox
    for index, (text, box) in enumerate(texts):
        assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1, f"{text!r} leaves the figure"
        assert frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1, f"{text!r} leaves the figure"
        for other, other_box in texts[index + 1 :]:
            assert not _overlap(box, other_box), f"{text!r} overlaps {other!r}"
        for area in areas:
            assert not _overlap(box, area), f"{text!r} covers a plotting area"


def _line_style(line) -> tuple:
    return (line.get_color(), line.get_marker(), line.get_linestyle())


@pytest.fixture(scope="module")
def densenet_report():
    """densenet121_full at 64x64 (58 full layers in stages of 6, 12, 24 and 16), narrowed to measure in seconds."""
    torch.manual_seed(0)
    model = niff.create_model("densenet121_full", num_classes=10, growth_rate=4, bn_size=1, num_init_features=8)
    return analyse_model(model, 64, "densenet121_full")


def test_every_layer_is_named_and_styled_apart_in_the_spectral_error_figure(digits_report, densenet_report):
    for report in (digits_report.report, densenet_report):
        figure = error_figure(report)
        assert len(figure.axes) == len(report.stages)
        for ax, stage in zip(figure.axes, report.stages, strict=True):
            assert [t.get_text() for t in ax.get_legend().get_texts()] == [s.layer for s in stage.layers]
            lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
            assert [line.get_label() for line in lines] == [s.layer for s in stage.layers]
            assert len({_line_style(line) for line in lines}) == len(lines)  # each layer its own look
    assert [len(stage.layers) for stage in densenet_report.stages] == [6, 12, 24, 16]
    styles = [_layer_style(index) for index in range(160)]
    assert len({(s["color"], s["marker"], s["linestyle"]) for s in styles}) == 160


def test_densenet_figures_are_legible(densenet_report):
    assert_legible(error_figure(densenet_report))
    figure = kernels_figure(densenet_report)
    assert_legible(figure)
    rows = [ax.get_ylabel() for ax in figure.axes if ax.get_ylabel()]
    assert all(max(len(line) for line in row.split("\n")[:-1]) <= 22 for row in rows)


def test_digits_figures_are_legible(digits_report):
    assert_legible(error_figure(digits_report.report))
    assert_legible(kernels_figure(digits_report.report))


def test_effective_kernels_larger_than_the_map_are_marked(digits_report):
    report = digits_report.report
    last = report.layers[-1]
    assert last.map_size == 4 and last.effective_kernel(0.9) == 5  # K=5 on a 4x4 map
    drawn = figures(report)

    (ax,) = drawn["effective_kernels.png"].axes
    cells = ax.tables[0].get_celld()
    row = next(r for (r, c), cell in cells.items() if c == 0 and cell.get_text().get_text() == last.layer)
    assert [cells[row, c].get_text().get_text() for c in (4, 5, 6)] == ["5*", "5*", "5*"]
    assert any(t.get_text().startswith("* exceeds the map") for t in drawn["effective_kernels.png"].texts)
    fits = report.layers[2]  # 16x16: 13 at 90 % fits the map; 17 at 99 % does not
    row = next(r for (r, c), cell in cells.items() if c == 0 and cell.get_text().get_text() == fits.layer)
    assert cells[row, 4].get_text().get_text() == "13" and cells[row, 6].get_text().get_text() == "17*"

    titles = [ax.get_title() for ax in drawn["spectral_error.png"].axes]
    assert titles[-1].endswith("shaded: K=5 exceeds the 4x4 map (the whole kernel)")

    markdown = render(report)
    assert f"| `{last.layer}` | depthwise | 4x4 | 128 | 5\\* | 5\\* | 5\\* |" in markdown
    assert OVERSIZED_NOTE.replace("*", "\\*", 1) in markdown


def test_layer_names_wrap_at_dots_and_join_back():
    name = "features.denseblock3.denselayer24.conv2"
    assert wrap_name(name) == "features.denseblock3.\ndenselayer24.conv2"
    assert wrap_name("layer1.0.conv1.0") == "layer1.0.conv1.0"
    assert wrap_name("a_very_long_single_component_name") == "a_very_long_single_component_name"
    for text in (name, "layer1.0.conv1.0", "stages.3.blocks.2.conv_dw.1"):
        assert "".join(wrap_name(text).split("\n")) == text
