"""Every ```sh and ```python block in README.md and docs/*.md, and how the suite runs it or why it cannot.

A block is known by its file and a hash of its text (``docs/report.md#1a2b3c4d``): an edited block is a new
block, to classify again. tests/test_docs_commands.py fails on a block without a classification and on a
classification whose block is gone, printing the entry to paste. Times were measured on a 2-core VM.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LANGUAGES = {"sh": "sh", "bash": "sh", "shell": "sh", "console": "sh", "python": "python", "py": "python"}
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Block:
    """A fenced command block of a Markdown file."""

    path: str  # relative to the repository root
    line: int  # of the opening fence
    language: str  # "sh" or "python"
    text: str

    @property
    def key(self) -> str:
        return f"{self.path}#{hashlib.sha256(self.text.encode()).hexdigest()[:8]}"

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0]


def blocks() -> list[Block]:
    """The sh and python blocks of README.md and docs/*.md, in document order."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) in LANGUAGES:
                line = text.count("\n", 0, match.start()) + 1
                found.append(Block(str(path.relative_to(ROOT)), line, LANGUAGES[match.group(1)], match.group(2)))
    return found


@dataclass(frozen=True)
class Run:
    """Run by ``test`` in tests/test_docs_commands.py; ``variant`` says how its command differs, if it does."""

    test: str
    variant: str = ""


@dataclass(frozen=True)
class RunElsewhere:
    """Run, in the concrete form ``note`` describes, by other tests (``tests/file.py::test_name``)."""

    tests: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class NotRunnable:
    """Not run by the suite, and why."""

    reason: str


Classification = Run | RunElsewhere | NotRunnable

GPU = "needs an NVIDIA GPU (and a CUDA image or TORCH_VARIANT=cu130 install); this machine has none"
CONTAINERS = (
    "needs a container engine building images (minutes, and base images and wheels from registries); "
    "`make image-test` (deploy/image/ci.sh) builds and runs the CPU serve-onnx and export images in CI, "
    "with deploy/smoke.sh; tests/deploy/test_smoke.py plays the same pod without containers"
)
CLUSTER = "needs a Kubernetes cluster (with KServe for the InferenceService); tests/deploy/ validates the manifests"
PAPER = "needs the paper's checkpoints (resnet50_split.pth, ckpt.pt), which are not shipped and never downloaded"
NETWORK = "needs PyPI and PyTorch's package index; the suite runs offline"
SERVICE_LOAD = (
    "a load benchmark: at least {} s of load alone (its --duration, per concurrency level and mode), "
    "on a model exported at 224² (12 s of export); benchmarks are measurements, not tests"
)
DIGITS_FOR_PAPER = (
    "with the shipped digits checkpoint copied to resnet50_split.pth and --size 32 for 224 ("
    + PAPER.removeprefix("needs ")
    + ")"
)

CLASSIFIED: dict[str, Classification] = {
    # README.md
    "README.md#321c68b5": RunElsewhere(  # make serve / make test
        ("tests/test_readme.py::test_curl_line_classifies_the_example",),
        "make serve with free PORT/GRPC_PORT and a scratch MODELS; make test is this suite (10 min) itself",
    ),
    "README.md#1a75d54e": RunElsewhere(("tests/test_readme.py::test_curl_line_classifies_the_example",)),  # curl
    "README.md#d19f7a02": RunElsewhere(("tests/test_readme.py::test_plain_python_snippet",)),  # httpx
    "README.md#73f74489": NotRunnable(  # pip install
        NETWORK + "; tests/test_install.py checks how make install resolves torch before the project"
    ),
    "README.md#bd04bf2f": Run("test_your_own_checkpoint", DIGITS_FOR_PAPER),  # niff-export + niff-serve
    "README.md#a8d1ba5f": RunElsewhere(("tests/test_readme.py::test_tritonclient_snippet",)),
    "README.md#21c146dc": RunElsewhere(("tests/test_readme.py::test_grpc_snippet",)),
    "README.md#01904d16": Run(  # import niff
        "test_model_library_snippet", "ckpt.pth: the digits weights as a training checkpoint with EMA weights"
    ),
    # docs/benchmarks.md: measurements, minutes each
    "docs/benchmarks.md#6e00c209": NotRunnable(  # export_speed.py
        "a benchmark: 15 s of timing per candidate and batch after exporting resnet50_split at 224² (minutes)"
    ),
    "docs/benchmarks.md#c0ab4028": NotRunnable(  # spectral_layers.py
        "a benchmark: the whole-model lines alone take 101 s and 94 s (the docs' own times)"
    ),
    "docs/benchmarks.md#f2967e81": NotRunnable("a benchmark: 75 s and 82 s (the docs' own times), tuning included"),
    "docs/benchmarks.md#f32d08d9": NotRunnable(  # compact_speed.py
        "a benchmark: resnet50_split at 224², exact and compact exports and 8-12 timed rounds (minutes)"
    ),
    "docs/benchmarks.md#e028dd38": NotRunnable(  # compact_speed.py --openvino
        "a benchmark: about 4 min (ResNet-50-split at 224², batch 8, 8 rounds, both runtimes)"
    ),
    "docs/benchmarks.md#6b303c8d": NotRunnable("a benchmark: 7.5 min (the docs' own time)"),
    "docs/benchmarks.md#4fb0c883": NotRunnable(  # compact_accuracy.py
        "a benchmark: 2 min (the docs' own time); niff-eval's digits figures run in test_niff_eval_on_the_digits"
    ),
    "docs/benchmarks.md#7416524c": NotRunnable(SERVICE_LOAD.format(160)),
    "docs/benchmarks.md#e7ced4cc": NotRunnable("a load benchmark: 3,000 requests per concurrency level, 3 levels"),
    "docs/benchmarks.md#2331cfd5": NotRunnable(  # hostile_images.py
        "a benchmark: every hostile image 5 times against a live server; tests/service/test_server_hostile.py "
        "sends the same images"
    ),
    "docs/benchmarks.md#73f56bc4": NotRunnable(  # hostile_requests.py
        "a benchmark: slow and oversized requests and a SIGTERM under 256 keep-alive clients; "
        "tests/service/test_server_hardening.py and test_server_lifecycle.py assert the behaviours"
    ),
    "docs/benchmarks.md#d105f799": NotRunnable(  # schemathesis_check.py
        "property-based API fuzzing for up to 120 s (--max-time); "
        "tests/service/test_openapi_conformance.py checks the OpenAPI document against the server"
    ),
    "docs/benchmarks.md#f7606ba3": NotRunnable("a load benchmark: 512 clients for 60 s (--duration)"),
    "docs/benchmarks.md#79494c78": NotRunnable("a load benchmark: 300 s and 551 s (the docs' own times)"),
    "docs/benchmarks.md#56232017": NotRunnable(  # feeding_power.py
        "a benchmark: 16 min, four runs of 227-238 s (the docs' own times), exports included"
    ),
    "docs/benchmarks.md#a9f6f55e": NotRunnable(  # torch_export_vs_torchscript.py
        "a benchmark: 7 rounds of 3 s per candidate and model, exports included (minutes)"
    ),
    # docs/deploy.md
    "docs/deploy.md#ca3aec67": NotRunnable(CONTAINERS + "; the CUDA variant also needs a GPU to run"),  # make image
    "docs/deploy.md#c79d5cab": NotRunnable(  # make lock
        NETWORK + "; tests/deploy/test_locks.py checks the lock files it writes"
    ),
    "docs/deploy.md#74dfe291": NotRunnable(PAPER + "; " + CONTAINERS + "; " + GPU),  # docker run --gpus
    "docs/deploy.md#89fc8d77": NotRunnable(  # base.sh
        "needs root, debootstrap and podman, and builds a Debian base and an image (minutes); "
        "`make image-test` uses it where no base image can be pulled"
    ),
    "docs/deploy.md#923de391": NotRunnable(  # sizes.py
        "reads every pinned wheel's zip directory from PyPI over HTTP range requests (needs /opt/wheels and "
        "the network); the suite runs offline"
    ),
    "docs/deploy.md#829d688d": NotRunnable(PAPER + "; " + CONTAINERS),  # niff-export + make image + smoke.sh
    "docs/deploy.md#f05fd0f9": NotRunnable(  # kubectl port-forward + smoke.sh
        CLUSTER + "; tests/deploy/test_smoke.py::test_smoke_script_classifies_and_drains_the_server_without_torch "
        "runs smoke.sh through SMOKE_URL"
    ),
    "docs/deploy.md#9d4cb59c": NotRunnable(CLUSTER),  # kubectl apply (KServe)
    "docs/deploy.md#8ac5d0a2": NotRunnable(  # kubectl apply (KServe transformer in front of Triton)
        CLUSTER + "; tests/deploy/test_kserve.py checks the manifest and that niff-serve starts from the "
        "arguments KServe appends"
    ),
    "docs/deploy.md#7140c8d9": Run("test_kserve_request_json"),  # request.json
    # docs/model-repository.md: Rollout, steps 1 and 4
    "docs/service.md#cb42880f": RunElsewhere(  # niff-serve --predictor
        (
            "tests/service/test_transformer.py::test_classify_answers_as_the_predictor_itself",
            "tests/service/test_transformer.py::test_the_transformer_loads_no_runtime_and_says_where_models_run",
        ),
        "a niff-serve on free ports stands in for predictor-host:8001",
    ),
    "docs/model-repository.md#86e39a80": Run(
        "test_rollout", "after exporting the shipped checkpoint as version 1, and copying it to digits_v2.pt"
    ),
    "docs/model-repository.md#cbbcda3d": Run("test_rollout"),
    # docs/report.md
    "docs/report.md#f12e86d6": Run(  # niff-report synopsis
        "test_niff_report", "a synopsis: CHECKPOINT, S, DIR filled in with the digits model, options left out"
    ),
    "docs/report.md#6c6c8d17": RunElsewhere(  # niff-export --compact… synopsis
        (
            "tests/test_compact.py::test_compact_export_records_what_it_approximated",
            "tests/test_compact.py::test_compact_summary_says_which_layers_stay_spectral",
            "tests/test_compact.py::test_gate_fails_below_the_minimum_agreement",
            "tests/test_compact.py::test_user_mistakes",
            "tests/test_compact_gate.py::test_labelled_images_gate_on_the_accuracy_drop_not_on_agreement",
            "tests/test_compact_gate.py::test_an_accuracy_drop_above_the_allowance_fails_and_says_how_to_proceed",
        ),
        "a synopsis; niff-export's main() on the digits checkpoint with --compact-kernel 9, --compact 0.9 "
        "--compact-kernel 7, --calibration with --compact-min-agreement, and --compact-error",
    ),
    "docs/report.md#eca88ed6": RunElsewhere(  # niff-eval synopsis
        (
            "tests/test_evaluate.py::test_a_checkpoint_its_exact_and_compact_exports_side_by_side",
            "tests/test_evaluate.py::test_an_exported_folder_is_evaluated_as_it_is_served",
        ),
        "a synopsis; niff-eval's main() on the digits checkpoint (--compact-kernel 9 --out) and on its export",
    ),
    "docs/report.md#1d73add8": Run("test_niff_eval_on_the_digits"),
    # docs/service.md
    "docs/service.md#0f8240eb": Run("test_service_guide", "each niff-serve on free ports (--port, --grpc-port)"),
    "docs/service.md#ff11d65f": Run(  # curl with $KEY
        "test_service_guide",
        "against the README's export: the digits model named resnet50_split (32²); cat.jpg and dog.png are "
        "the example digits 7 (as JPEG) and 3",
    ),
    "docs/service.md#e20be202": Run("test_service_guide", "as above, with 32 for 224"),  # tritonclient.http
    "docs/service.md#bc3dc7d7": Run("test_service_guide", "after the block above, which defines triton, headers"),
    "docs/service.md#b7486371": Run("test_service_guide", "as above"),  # tritonclient.grpc
    "docs/service.md#6ae588a3": NotRunnable(SERVICE_LOAD.format(60)),
    "docs/service.md#ec46aabf": NotRunnable("a load benchmark: 2 modes x 2 sizes x 3 levels x 3 rounds of up to 20 s"),
}
