"""The parity gate: eager vs baked vs every written artifact, on random inputs and real photos.

When the gate fails (or the user set its tolerance), the eager model also runs in float64 on the same
inputs: how far eager float32 itself drifts from float64 tells an ill-conditioned model (the export's
error is of the order of that drift: rounding) from a wrong export (its error is far above it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from niff_contract import Agreement, Parity, ParityRow, ToleranceOverride

FP32_TOLERANCE = 1e-4
# Half precision keeps ~3 significant digits per operation; across a deep network the logits drift
# by up to ~1e-3 relative, so the fp16 gate allows 1e-2 and still requires the same top-1 on photos.
FP16_TOLERANCE = 1e-2
# Unit roundoff of float32 and float16. A model whose float32 output drifts X (relative) from float64
# amplifies rounding by about X / FP32_ROUNDOFF; an export computing in float16 is then expected to be
# off by about X * FP16_ROUNDOFF / FP32_ROUNDOFF.
FP32_ROUNDOFF = 2.0**-24
FP16_ROUNDOFF = 2.0**-11
# An export whose error stays within this factor of the error the model's own float32 drift predicts is
# rounding, amplified by the model; above it, the export computes something else.
ROUNDING_FACTOR = 10.0
# The candidate of the rows that compare eager float32 with eager float64.
DRIFT_CANDIDATE = "eager (fp32) vs fp64"


def compare(candidate: str, inputs: str, reference: Tensor, output: Tensor) -> ParityRow:
    reference, output = reference.double(), output.double()
    return ParityRow(
        candidate=candidate,
        inputs=inputs,
        max_abs=float((output - reference).abs().max()),
        rel_err=float((output - reference).norm() / reference.norm().clamp_min(1e-30)),
        top1_agreement=float((output.argmax(1) == reference.argmax(1)).double().mean()),
    )


def tolerance_problem(tolerance: float) -> str | None:
    """A user's parity tolerance is a relative error: strictly between 0 and 1."""
    if isinstance(tolerance, (int, float)) and 0 < tolerance < 1:
        return None
    return f"must be a relative error between 0 and 1 (exclusive), got {tolerance!r}"


def default_tolerance(fp16: bool) -> float:
    return FP16_TOLERANCE if fp16 else FP32_TOLERANCE


def float64_drift(
    model: nn.Module, inputs: Mapping[str, Tensor], float32: Mapping[str, Tensor], chunk: int
) -> tuple[ParityRow, ...]:
    """Eager float32 outputs (``float32``, per input set) against a float64 copy of ``model`` on the same inputs."""
    double = copy.deepcopy(model).double().eval()
    rows = []
    with torch.no_grad():
        for name, batch in inputs.items():
            reference = torch.cat([double(part.double()) for part in batch.split(chunk)])
            rows.append(compare(DRIFT_CANDIDATE, name, reference, float32[name]))
    return tuple(rows)


def suggested_tolerance(error: float) -> float:
    """A round tolerance (1, 2 or 5 times a power of ten) at least twice ``error``."""
    target = 2 * error
    exponent = math.floor(math.log10(target))
    steps = (float(f"{step}e{power}") for power in (exponent, exponent + 1) for step in (1, 2, 5))
    return next(value for value in steps if value >= target)


@dataclass(frozen=True)
class Diagnosis:
    """Why a gate failed: an ill-conditioned model (the export's error is rounding) or a wrong export."""

    ill_conditioned: bool
    drift: float  # the largest relative error of eager float32 against float64 over the input sets
    error: float  # the largest relative error of a candidate (over the rows diagnosed)
    worst: ParityRow  # the row furthest above what the drift predicts
    text: str


@dataclass(frozen=True)
class ParityReport:
    """The gate's rows and tolerance. ``default_tolerance`` is set when the user replaced the default with
    ``tolerance``; ``drift`` (eager float32 against float64, per input set) when it was measured."""

    rows: tuple[ParityRow, ...]
    tolerance: float
    default_tolerance: float | None = None
    drift: tuple[ParityRow, ...] | None = None

    @property
    def failures(self) -> list[ParityRow]:
        """Rows over the relative tolerance, or with a different top-1 class on a real photo."""
        return [
            row
            for row in self.rows
            if not row.rel_err <= self.tolerance or (row.inputs == "photos" and row.top1_agreement < 1.0)
        ]

    @property
    def passed(self) -> bool:
        return not self.failures

    def table(self) -> str:
        width = max(22, *(len(row.candidate) + 2 for row in self.rows))
        inputs = max(9, *(len(row.inputs) + 1 for row in self.rows))
        header = f"{'candidate':<{width}}{'inputs':<{inputs}}{'max abs':>11}{'rel err':>11}{'top-1':>8}  verdict"
        lines = [header, "-" * len(header)]
        failing = set(map(id, self.failures))
        for row in self.rows:
            verdict = "FAIL" if id(row) in failing else "ok"
            lines.append(
                f"{row.candidate:<{width}}{row.inputs:<{inputs}}{row.max_abs:>11.2e}{row.rel_err:>11.2e}"
                f"{row.top1_agreement:>8.0%}  {verdict}"
            )
        if self.default_tolerance is None:
            lines.append(f"tolerance: relative error <= {self.tolerance:g}; identical top-1 on photos")
        else:
            lines.append(
                f"tolerance: relative error <= {self.tolerance:g}, SET BY --parity-tolerance (default "
                f"{self.default_tolerance:g}); identical top-1 on photos"
            )
        if self.drift is not None:
            drift = ", ".join(f"{row.rel_err:.2e} ({row.inputs})" for row in self.drift)
            lines.append(f"eager float32 vs float64 (the model's own rounding): relative error {drift}")
        diagnosis = self.diagnosis()
        if diagnosis is not None and not self.passed:
            lines += ["", f"diagnosis: {diagnosis.text}"]
        elif diagnosis is not None and not diagnosis.ill_conditioned:
            lines += ["", f"warning: the gate passed at --parity-tolerance {self.tolerance:g}, but {diagnosis.text}"]
        return "\n".join(lines)

    def diagnosis(self) -> Diagnosis | None:
        """Ill-conditioned model or wrong export, judged on the failing rows (all rows when the gate passed);
        None when the drift was not measured, or no row's relative error is to be explained."""
        if self.drift is None:
            return None
        drift = {row.inputs: row.rel_err for row in self.drift}
        rows = [row for row in self.failures or self.rows if row.inputs in drift]
        if not rows:
            return None

        def expected(row: ParityRow) -> float:
            # What an export differing from eager only by rounding is expected to be off by (at least the
            # roundoff itself, for a model whose float32 output happens to equal its float64 one).
            roundoff = FP16_ROUNDOFF if "(fp16)" in row.candidate else FP32_ROUNDOFF
            return max(drift[row.inputs], FP32_ROUNDOFF) * roundoff / FP32_ROUNDOFF

        worst = max(rows, key=lambda row: row.rel_err / expected(row))
        ill = worst.rel_err <= ROUNDING_FACTOR * expected(worst)
        largest_drift = max(drift.values())
        error = max(row.rel_err for row in rows)
        fp16 = "(fp16)" in worst.candidate
        flipped = [r for r in self.drift if r.inputs == "photos" and r.top1_agreement < 1.0]
        if ill:
            beyond = (
                f"more than the tolerance {self.tolerance:g}"
                if largest_drift > self.tolerance
                else f"within the tolerance {self.tolerance:g}, but the model amplifies rounding"
            )
            half = " (computed in float16, whose rounding is 8192 times float32's)" if fp16 else ""
            text = (
                f"the model is ill-conditioned: eager float32 itself differs from float64 by "
                f"{largest_drift:.1e} (relative), {beyond}; the export{half} differs from eager float32 by "
                f"{error:.1e}, of the order that rounding explains: the export computes the same function, and "
                "the model amplifies rounding error."
            )
            if flipped:
                text += (
                    " Eager float32 already changes the top-1 class of a photo against float64, so no "
                    "tolerance makes the model's float32 class on that photo reliable."
                )
            elif not self.passed and any(row.rel_err > self.tolerance for row in rows):
                suggestion = suggested_tolerance(max(row.rel_err for row in self.rows))
                text += (
                    f" If the eager model's own float32 output is good enough for you, accept a looser gate with "
                    f"--parity-tolerance {suggestion:g} (Python: parity_tolerance={suggestion:g}); niff.json "
                    "records it, with this drift."
                    if suggestion < 1
                    else " Its float32 output has no significant digits left: no tolerance makes it usable."
                )
            elif not self.passed:
                text += (
                    " The gate failed on a photo's top-1 class, not on the relative error: the photo's two best "
                    "classes are within rounding of each other (--parity-tolerance does not relax the top-1 rule)."
                )
        else:
            text = (
                f"the export is wrong: {worst.candidate} differs from eager float32 by "
                f"{worst.rel_err:.1e} on the {worst.inputs} inputs, far above what rounding explains (eager float32 "
                f"itself differs from float64 by {drift[worst.inputs]:.1e}). This is not an ill-conditioned model; "
                "a looser tolerance would hide a real error. Please report it, with the checkpoint if you can."
            )
        return Diagnosis(ill, largest_drift, error, worst, text)

    def record(self) -> Parity:
        """What niff.json keeps of this report: a tolerance the user set says so, with the measured drift."""
        override = None
        if self.default_tolerance is not None:
            override = ToleranceOverride(default_tolerance=self.default_tolerance, float32_drift=self.drift or ())
        return Parity(tolerance=self.tolerance, passed=self.passed, rows=self.rows, tolerance_override=override)


def parity_report(
    rows: tuple[ParityRow, ...],
    fp16: bool,
    tolerance: float | None,
    drift: Callable[[], tuple[ParityRow, ...]],
) -> ParityReport:
    """The gate's report at the default tolerance or the user's. ``drift`` (eager float32 against float64, see
    ``float64_drift``) is measured when the gate fails, to diagnose it, and when the user set the tolerance,
    to record it."""
    default = default_tolerance(fp16)
    report = ParityReport(rows, default if tolerance is None else tolerance, None if tolerance is None else default)
    if report.passed and tolerance is None:
        return report
    return ParityReport(report.rows, report.tolerance, report.default_tolerance, drift())


def parity_inputs(size: int, photos: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """Seeded random inputs (batch 3, to exercise a batch the export never saw) and the real photos."""
    generator = torch.Generator().manual_seed(seed)
    return {"random": torch.randn(3, 3, size, size, generator=generator), "photos": photos}


# Inputs that are real images: the compact gate holds agreement on one of them to its minimum.
IMAGE_INPUTS = ("photos", "calibration")


def correct_share(correct: int, images: int) -> str:
    """A count of correct images and its share, as in "446/450 = 99.11 %"."""
    return f"{correct}/{images} = {100 * correct / images:.2f} %"


@dataclass(frozen=True)
class AccuracyDrop:
    """Top-1 accuracy of the exact and the compact model on labelled calibration images, and the drop allowed
    (``max_drop``, a share of the images): what decides a compact export when the user's images are labelled."""

    images: int
    exact_correct: int
    compact_correct: int
    max_drop: float

    @classmethod
    def measure(cls, labels: Tensor, exact: Tensor, compact: Tensor, max_drop: float) -> AccuracyDrop:
        """From the two models' logits on the images labelled ``labels``."""
        correct = lambda logits: int((logits.argmax(1) == labels).sum())  # noqa: E731
        return cls(len(labels), correct(exact), correct(compact), max_drop)

    @property
    def drop(self) -> float:
        """The share of the images the compact model loses against the exact one (negative when it gains)."""
        return (self.exact_correct - self.compact_correct) / self.images

    @property
    def passed(self) -> bool:
        # Compared in images, so that a drop equal to the allowance passes whatever the share's rounding.
        return self.exact_correct - self.compact_correct <= self.max_drop * self.images + 1e-9

    def text(self) -> str:
        return (
            f"exact {correct_share(self.exact_correct, self.images)}, compact "
            f"{correct_share(self.compact_correct, self.images)}, drop {100 * self.drop:.2f} points"
        )


@dataclass(frozen=True)
class AgreementReport:
    """How closely an approximate (compact) model follows the exact baked model and eager PyTorch.

    Errors are reported, not bounded: the approximation is deliberate. The user's images decide the gate
    when given: the top-1 accuracy drop (``accuracy``) on labelled ones, top-1 agreement (at least
    ``min_agreement``) on unlabelled ones. Only without them does agreement on the gate's two generic
    photos decide. Every other row is reported, not gated.
    """

    rows: tuple[ParityRow, ...]
    min_agreement: float
    accuracy: AccuracyDrop | None = None

    @property
    def gated(self) -> tuple[str, ...]:
        """The image inputs whose agreement is gated: none when the accuracy is."""
        if self.accuracy is not None:
            return ()
        return ("calibration",) if any(row.inputs == "calibration" for row in self.rows) else ("photos",)

    @property
    def failures(self) -> list[ParityRow]:
        return [r for r in self.rows if r.inputs in self.gated and r.top1_agreement < self.min_agreement]

    @property
    def passed(self) -> bool:
        return not self.failures and (self.accuracy is None or self.accuracy.passed)

    def table(self) -> str:
        header = f"{'candidate':<22}{'inputs':<12}{'max abs':>11}{'rel err':>11}{'top-1':>9}  verdict"
        kind = "agreement" if self.accuracy is None else "accuracy"
        lines = [f"Compact model vs the exact model and eager PyTorch (an approximation: gated on {kind})"]
        lines += [header, "-" * len(header)]
        failing = set(map(id, self.failures))
        for row in self.rows:
            verdict = "FAIL" if id(row) in failing else "ok" if row.inputs in self.gated else "-"
            lines.append(
                f"{row.candidate:<22}{row.inputs:<12}{row.max_abs:>11.2e}{row.rel_err:>11.2e}"
                f"{row.top1_agreement:>9.2%}  {verdict}"
            )
        if self.accuracy is not None:
            verdict = "ok" if self.accuracy.passed else "FAIL"
            lines.append(f"top-1 accuracy on calibration: {self.accuracy.text()}  {verdict}")
        lines.append(f"gate: {self.gate_text()}")
        return "\n".join(lines)

    def gate_text(self) -> str:
        """What decided, and that the photos did not when the user's images did."""
        if self.accuracy is not None:
            drop = self.accuracy.max_drop
            return (
                f"top-1 accuracy drop <= {100 * drop:.2f} points on the labelled calibration images "
                f"(--compact-max-accuracy-drop {drop:g}); agreement (photos included) is reported, not gated"
            )
        text = f"top-1 agreement >= {self.min_agreement:.2%} on images ({', '.join(self.gated)})"
        return text if self.gated == ("photos",) else f"{text}; the photos are reported, not gated"

    def record(self) -> Agreement:
        """What niff.json keeps of this report."""
        return Agreement(
            min_agreement=self.min_agreement,
            passed=self.passed,
            rows=self.rows,
            gate="agreement" if self.accuracy is None else "accuracy",
            gated_inputs=self.gated,
        )
