"""Token boundaries on SmolLM2 (issue 25; ``benchmarks/token_seams.py`` audits all 47
labelled tasks): the ids structgen feeds are the tokenizer's own encoding of the answer,
except where the model itself chose another split among tokens the grammar allowed. A
forced run tokenized apart from the token before it, a guard's or closing's token that the
tokenizer would merge with what follows, or a mask that refuses the tokenizer's token
would each show up here as a span of another origin, or as one the grammar refused."""

from __future__ import annotations

from typing import Any

import pytest

from structgen.backends.local.decoder import ORIGINS, Decoder
from structgen.backends.local.models import smollm2_gguf_path
from structgen.tools.seams import audit, divergences

from .test_layout import _intent_chat
from .test_llamacpp import make

# The audit alone -------------------------------------------------------------------------
BYTES = [b"{", b'"', b'{"', b"kind", b'":', b' "', b"a", b'"}', b"}", b'":"', b'"', b"ab"]


def test_divergences_name_each_span_split_otherwise_and_who_started_it() -> None:
    canonical = [2, 3, 4, 5, 6, 7]  # {"  kind  ":  _"  a  "}
    assert divergences(BYTES, canonical, canonical) == []
    fed = [0, 1, 3, 4, 5, 6, 10, 8]  # {  "  kind  ":  _"  a  "  }
    spans = divergences(BYTES, fed, canonical, "mfffmmmf")
    assert [(d.start, d.fed_index, d.canonical_index, d.origin) for d in spans] == [
        (0, 0, 0, "m"), (len(b'{"kind": "a'), 6, 5, "m")]
    assert spans[0].fed == (b"{", b'"') and spans[0].canonical == (b'{"',)
    assert spans[1].fed == (b'"', b"}") and spans[1].canonical == (b'"}',)
    # a forced token that starts a span is named as such
    assert divergences(BYTES, fed, canonical, "fffffffm")[0].origin == "f"


def test_audit_says_whether_the_grammar_allowed_the_tokenizers_token() -> None:
    class Matcher:
        def __init__(self, refused: set[int]) -> None:
            self.refused = refused

        def fork(self) -> Matcher:
            return self

        def consume_all(self, ids: list[int]) -> bool:
            return True

        def accepts(self, tok: int) -> bool:
            return tok not in self.refused

    fed, canonical = [0, 1, 3], [2, 3]
    assert [d.allowed for d in audit(BYTES, fed, canonical, "mfm", Matcher(set()))] == [True]
    assert [d.allowed for d in audit(BYTES, fed, canonical, "mfm", Matcher({2}))] == [False]
    assert [d.allowed for d in audit(BYTES, fed, canonical, "mfm", None)] == [None]


# On SmolLM2 ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2() -> Any:
    eng, backend = make(smollm2_gguf_path())
    yield eng, backend
    backend.shutdown()


@pytest.mark.parametrize(("examples", "turns"), [(None, False), ("compact", False),
                                                 ("spaced", True)])
def test_fed_tokens_are_the_tokenizers_own_but_where_the_model_chose(
        smollm2: Any, examples: str | None, turns: bool) -> None:
    from schemas.intent import Intent

    eng, backend = smollm2
    rt = backend.runtime(None)
    request = eng.build_request(_intent_chat(examples, turns), Intent, max_tokens=160)
    r = backend.generate(request)
    ids, origins = r.stats["token_ids"], r.stats["token_origins"]
    assert len(ids) == len(origins) == r.completion_tokens
    assert set(origins) <= set(ORIGINS) and "f" in origins and "m" in origins
    assert b"".join(rt.token_bytes[i] for i in ids) == r.text.encode()
    canonical = rt.tok.encode(r.text)
    fresh = rt.engine(backend.cfg.engine).matcher(
        request.output, Decoder(rt, backend.cfg, None)._options(request))  # type: ignore[arg-type]
    whole = fresh.fork()
    assert whole.consume_all(canonical) and whole.is_accepting(), r.text
    for span in audit(rt.token_bytes, ids, canonical, origins, fresh):
        # only the model's own choice starts a span, and the grammar allowed the
        # tokenizer's token there (SmolLM2 writes "target" + "s" for "targets" on its own)
        assert (span.origin, span.allowed) == ("m", True), (span, r.text)
    # the prompt's last token does not merge with the answer's first characters
    last = rt.prompt_ids(request)[-1]
    seam = (rt.token_bytes[last] + r.text.encode()[:16]).decode("utf-8", "replace")
    assert rt.tok.encode(seam)[:1] == [last]


def test_xgrammar_leaves_a_token_that_a_longer_allowed_one_begins_to_the_model(
        smollm2: Any) -> None:
    """XGrammar's jump-forward string ends where the grammar stops being sure: ``{"e": [``
    (an object item or ``]`` next). Its last token `` [`` begins `` [{``, which the
    tokenizer writes when an object follows, so forcing it alone split the text where the
    tokenizer would not (benchmarks/token_seams.py: ``' [' '{"'`` for ``' [{' '"'``)."""
    from structgen.constrain.base import ConstraintOptions
    from structgen.schema import compile_output

    schema = {"type": "object", "properties": {"e": {"type": "array", "items": {
        "type": "object", "properties": {"t": {"type": "string"}}, "required": ["t"]}}},
        "required": ["e"], "additionalProperties": False}
    rt = smollm2[1].runtime(None)
    m = rt.engine("xgrammar").matcher(compile_output(schema),
                                      ConstraintOptions(whitespace="spaced"))
    forced = m.forced_tokens()
    assert b"".join(rt.token_bytes[t] for t in forced) == b'{"e":', forced
    assert m.accepts(rt.tok.encode(" [{")[0])  # the model may write ' [{' itself
