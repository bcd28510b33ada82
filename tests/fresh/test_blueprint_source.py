"""The blueprint ``deploy`` creates advertises only what an operator can really get and run: no
container image (none is built), a native source whose entry point is the package's console
script, fetched by no one unless a real artifact URI is given."""

from __future__ import annotations

from blueprint.devnet import setup

SOURCE_NATIVE, FETCHER_NONE, FETCHER_HTTP = 2, 0, 2


def _source(**definition: object) -> tuple:
    spec = setup.blueprint_definition(jobs=["a"], binary_sha256=b"\x01" * 32, **definition)
    (source,) = spec[10]
    return source


def test_no_container_image_is_advertised() -> None:
    kind, container, _wasm, native, _testing, binaries = _source()
    assert kind == SOURCE_NATIVE
    assert container == ("", "", "")
    assert native == (FETCHER_NONE, "", "tangle-llm-blueprint")
    assert [b[2:] for b in binaries] == [("tangle-llm-blueprint", b"\x01" * 32)]


def test_a_real_artifact_uri_is_advertised_as_fetchable_over_http() -> None:
    uri = "https://example.org/tangle_llm_blueprint-0.1.0-py3-none-any.whl"
    assert _source(artifact_uri=uri)[3] == (FETCHER_HTTP, uri, "tangle-llm-blueprint")


def test_metadata_names_the_code_repository_when_given() -> None:
    meta = setup.BlueprintMeta(code_repository="https://github.com/example/tangle-llm-blueprint")
    spec = setup.blueprint_definition(jobs=["a"], binary_sha256=b"\x01" * 32, metadata=meta)
    assert spec[6][4] == "https://github.com/example/tangle-llm-blueprint"
