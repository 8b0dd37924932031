"""Hypothesis strategies for hostile request bodies, shared by the validation tests
and the HTTP fuzzing."""

from __future__ import annotations

from hypothesis import strategies as st

# JSON values as Python holds them.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)

# JSON *texts* as a hostile client writes them: any \\uXXXX escape (lone surrogates
# on purpose), numbers past a double's range, nesting.
_escapes = (st.integers(0, 0xFFFF) | st.integers(0xD800, 0xDFFF)).map(lambda c: f"\\u{c:04x}")
_plain = st.characters(min_codepoint=0x20, exclude_categories=["Cs"], exclude_characters='"\\')
json_strings = st.lists(_escapes | _plain, max_size=6).map(lambda parts: f'"{"".join(parts)}"')
json_numbers = st.integers(-(10**30), 10**30).map(str) | st.sampled_from(
    ["1e400", "-1e999", "1.5e308", "4.9e-324", "-0.0", "0.1"]
)
json_texts = st.recursive(
    json_strings | json_numbers | st.sampled_from(["true", "false", "null"]),
    lambda children: (
        st.lists(children, max_size=4).map(lambda items: f"[{','.join(items)}]")
        | st.lists(st.tuples(json_strings, children), max_size=4).map(
            lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
        )
    ),
    max_leaves=12,
)
bodies = (
    json_texts.map(lambda value: f'{{"data":{value}}}')
    | st.lists(json_texts, min_size=1, max_size=3).map(
        lambda values: '{"events":[' + ",".join(f'{{"data":{v}}}' for v in values) + "]}"
    )
    | json_texts
)
