"""The quickstart composed in Python, with public names: the stages `hf-ipt run recipes/quickstart.yaml` runs.

Run as `python recipes/quickstart.py OUTPUT_DIR`: OUTPUT_DIR/release is the CLI's release, byte for byte (a test
holds them equal).
"""

import sys

import hf_ipt as ipt
from hf_ipt.preflight import ensure_ready

MODEL = "output/tiny-synthesizer"  # hf-ipt's tiny offline synthesizer, built there on first use


def main(output_dir: str) -> None:
    run = ipt.RunConfig(output_dir=output_dir, shard_size=60)  # 6 resumable shards of two batches of 30 rows
    source = ipt.SourceConfig(path="bundled:quickstart", license="psf-2.0")
    general = ipt.MixSourceConfig(path="bundled:quickstart_general", kind="general_instructions", license="psf-2.0")
    synth = ipt.SynthesisConfig(model=MODEL, engine="transformers", rounds=3, max_model_len=512, max_new_tokens=64,
                                batch_size=30, engine_kwargs={"batch_size": 32, "dtype": "float32"})  # fmt: skip
    mix = ipt.MixConfig(weights={"augmented": 1, "general": 1}, tokenizer=MODEL, tolerance=0.05)
    release = ipt.ReleaseConfig(repo_id="local/hf-ipt-quickstart", version="v0.1", config_name="continual-m3")
    card = ipt.CardOptions(pretty_name="hf-ipt quickstart", summary="A toy instruction-augmented corpus made offline "
                           "by the hf-ipt quickstart with a tiny synthesizer.")  # fmt: skip
    stages = [
        ipt.SynthesizeStage(source, synth, chunk=ipt.ChunkSettings(max_chunk_tokens=150), build_tiny_model=True),
        ipt.TemplifyStage(ipt.TemplifyConfig(seed=0, target_tokenizer=MODEL)),
        ipt.MixStage(mix, {"general": general}),
        ipt.ReleaseStage(release, to="local", card=card, command=f"python recipes/quickstart.py {output_dir}"),
    ]
    ensure_ready(stages, run)  # every input checked in seconds, before any model is built or loaded
    for stage in stages:
        print("\n".join(stage.run(run).lines()))


if __name__ == "__main__":
    main(sys.argv[1])
