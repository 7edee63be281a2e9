"""Releases: one bundle (data, card, stats.json, recipe, plots) written to the Hub or to a folder.

- `hf_ipt.release.bundle`: `build_bundle` computes one config's report and files once.
- `hf_ipt.release.card`: what the card says beyond the rows (`ReleaseInfo`, `SourceInfo`, `SynthesizerInfo`,
  `CardOptions`) and `render_card`, which only reads the reports.
- `hf_ipt.release.hub`: `push_release` / `publish_release` commit bundles to the Hub, then tag; `load_release`,
  `verify_release`, `list_versions`.
- `hf_ipt.release.local`: `write_to_folder` writes a bundle to a folder through the run's store.
- `hf_ipt.release.plots`: the card's PNG plots.

This package's `__init__` imports none of them, so importing one module (e.g. the card options, which the recipe
needs) does not pull in the others.
"""
