"""The sampling defaults chosen by measurement (benchmarks/results/speed_curve.json) are one fact: ``medwidit
segment``'s flags (literals, so that --help imports nothing heavy) equal the Predictor's."""

import inspect

from medwidit.cli import build_parser
from medwidit.inference import Predictor
from medwidit.inference.predictor import DEFAULT_SAMPLES, DEFAULT_STEPS


def test_cli_and_predictor_defaults_are_the_same():
    from medwidit.cli import _resolve_model
    from medwidit.inference.options import SAMPLING_DEFAULTS

    args = build_parser().parse_args(["segment", "-i", "x.nii.gz", "-o", "out"])
    _resolve_model(args)  # unset flags take the (shipped) bundle's inference.json values
    assert (args.steps, args.samples) == (DEFAULT_STEPS, DEFAULT_SAMPLES)
    assert (SAMPLING_DEFAULTS["steps"], SAMPLING_DEFAULTS["num_samples"]) == (DEFAULT_STEPS, DEFAULT_SAMPLES)
    for method in (Predictor.segment, Predictor.predict_from_files, Predictor.check_options):
        parameters = inspect.signature(method).parameters
        assert parameters["steps"].default == DEFAULT_STEPS and parameters["num_samples"].default == DEFAULT_SAMPLES
