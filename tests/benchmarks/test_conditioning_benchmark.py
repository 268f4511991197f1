"""benchmarks/conditioning.py builds each pair's networks from learn_phantoms' architecture."""

from benchmark_scripts import load_benchmark

conditioning = load_benchmark("conditioning")


def test_each_option_builds_on_learn_phantoms_architecture_with_its_own_defaults():
    """From a review: build_net handed this script's arguments to learn_phantoms.widit, which reads options this
    script does not take (mlp_ratio, then embed and position): every run failed with an AttributeError."""
    args = conditioning.parse_args([])
    plain = conditioning.build_net({}, 0, args)
    concat = conditioning.build_net({"conditioning": "concat"}, 0, args)
    assert plain.config["hidden_size"] == args.hidden and plain.config["embed"] == "patch"
    assert concat.config["conditioning"] == "concat" and plain.config["conditioning"] == "embed"
