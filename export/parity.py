"""The parity gate: eager vs baked vs every written artifact, on random inputs and real photos."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from niff_contract import Agreement, Parity, ParityRow

FP32_TOLERANCE = 1e-4
# Half precision keeps ~3 significant digits per operation; across a deep network the logits drift
# by up to ~1e-3 relative, so the fp16 gate allows 1e-2 and still requires the same top-1 on photos.
FP16_TOLERANCE = 1e-2


def compare(candidate: str, inputs: str, reference: Tensor, output: Tensor) -> ParityRow:
    reference, output = reference.double(), output.double()
    return ParityRow(
        candidate=candidate,
        inputs=inputs,
        max_abs=float((output - reference).abs().max()),
        rel_err=float((output - reference).norm() / reference.norm().clamp_min(1e-30)),
        top1_agreement=float((output.argmax(1) == reference.argmax(1)).double().mean()),
    )


@dataclass(frozen=True)
class ParityReport:
    rows: tuple[ParityRow, ...]
    tolerance: float

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
        lines.append(f"tolerance: relative error <= {self.tolerance:g}; identical top-1 on photos")
        return "\n".join(lines)

    def record(self) -> Parity:
        """What niff.json keeps of this report."""
        return Parity(tolerance=self.tolerance, passed=self.passed, rows=self.rows)


def parity_inputs(size: int, photos: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """Seeded random inputs (batch 3, to exercise a batch the export never saw) and the real photos."""
    generator = torch.Generator().manual_seed(seed)
    return {"random": torch.randn(3, 3, size, size, generator=generator), "photos": photos}


# Inputs that are real images: the compact gate holds agreement on these to its minimum.
IMAGE_INPUTS = ("photos", "calibration")


@dataclass(frozen=True)
class AgreementReport:
    """How closely an approximate (compact) model follows the exact baked model and eager PyTorch.

    Errors are reported, not bounded: the approximation is deliberate. The gate is top-1 agreement on
    real images (``IMAGE_INPUTS``), which must reach ``min_agreement``.
    """

    rows: tuple[ParityRow, ...]
    min_agreement: float

    @property
    def failures(self) -> list[ParityRow]:
        return [r for r in self.rows if r.inputs in IMAGE_INPUTS and r.top1_agreement < self.min_agreement]

    @property
    def passed(self) -> bool:
        return not self.failures

    def table(self) -> str:
        header = f"{'candidate':<22}{'inputs':<12}{'max abs':>11}{'rel err':>11}{'top-1':>9}  verdict"
        lines = ["Compact model vs the exact model and eager PyTorch (an approximation: gated on agreement)"]
        lines += [header, "-" * len(header)]
        failing = set(map(id, self.failures))
        for row in self.rows:
            verdict = "FAIL" if id(row) in failing else "ok" if row.inputs in IMAGE_INPUTS else "-"
            lines.append(
                f"{row.candidate:<22}{row.inputs:<12}{row.max_abs:>11.2e}{row.rel_err:>11.2e}"
                f"{row.top1_agreement:>9.2%}  {verdict}"
            )
        images = [name for name in IMAGE_INPUTS if any(row.inputs == name for row in self.rows)]
        lines.append(f"gate: top-1 agreement >= {self.min_agreement:.2%} on images ({', '.join(images)})")
        return "\n".join(lines)

    def record(self) -> Agreement:
        """What niff.json keeps of this report."""
        return Agreement(min_agreement=self.min_agreement, passed=self.passed, rows=self.rows)
