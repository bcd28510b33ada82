"""``NodeConfig.model_card``: the one place every engine builds its ``/v1/models`` card from."""

from __future__ import annotations

from bench.echo_engine import EchoClient
from blueprint.llm.config import NodeConfig
from blueprint.llm.types import Pricing


def test_declared_fields_win_over_engine_defaults() -> None:
    config = NodeConfig(model="m", hugging_face_id="org/m", display_name="M", description="d",
                        quantization="int4", max_output_tokens=64, pricing=Pricing(prompt="0.1"))
    card = config.model_card(context_length=4096, engine_quantization="bf16", default_max_output=4096,
                             is_ready=True, endpoints=["chat"])
    assert (card.id, card.hugging_face_id, card.name, card.description) == ("m", "org/m", "M", "d")
    assert (card.quantization, card.max_output_length, card.context_length) == ("int4", 64, 4096)
    assert card.pricing.prompt == "0.1" and card.is_ready is True and card.endpoints == ["chat"]


def test_engine_values_fill_what_the_operator_left_out() -> None:
    card = NodeConfig(model="m").model_card(context_length=None, engine_quantization="fp16",
                                            default_max_output=512)
    assert (card.name, card.quantization, card.max_output_length) == ("m", "fp16", 512)
    assert card.context_length == 2048  # the card's default when the engine does not know


def test_the_echo_engine_uses_it() -> None:
    (card,) = EchoClient(NodeConfig(engine="bench.echo_engine:EchoClient", model="echo",
                                    display_name="Echo")).models()
    assert (card.id, card.name, card.context_length, card.is_ready) == ("echo", "Echo", 4096, True)
