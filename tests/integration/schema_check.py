"""Validate wire payloads against the project's JSON Schemas (schema/*.json).

    from schema_check import validate
    validate("message", json.loads(msg.payload))   # raises jsonschema.ValidationError

kind is a schema file's stem: send, message, event, request, reply, presence, receipt, typing.
Bytes are decoded as JSON first. Besides the schema, validate() checks the one cross-field rule
JSON Schema cannot state: a stamped message's id is "{conv}:{seq}".
"""
from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMA_DIR = Path(__file__).resolve().parent.parent.parent / "schema"
ASYNCAPI = SCHEMA_DIR / "asyncapi.yaml"
KINDS = ("send", "message", "event", "request", "reply", "presence", "receipt", "typing", "push_job", "push_ack", "push_webhook",
         "stats")

__all__ = ["KINDS", "SCHEMA_DIR", "ValidationError", "registry", "schema", "validate", "validate_asyncapi_loads"]


def _pattern(validator, pattern, instance, schema):
    # JSON Schema patterns are ECMA-262, where "$" matches only at the very end; Python's "$" also
    # matches before a trailing "\n", which would let "alice\n" pass as a user id.
    if not validator.is_type(instance, "string"):
        return
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    if not re.search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {schema['pattern']!r}")


_Validator = validators.extend(Draft202012Validator, {"pattern": _pattern})


@cache
def _schemas() -> dict[str, dict]:
    out = {}
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        out[path.stem] = json.loads(path.read_text(encoding="utf-8"))
    if not out:
        raise FileNotFoundError(f"no schema files in {SCHEMA_DIR}")
    return out


@cache
def registry() -> Registry:
    """A referencing.Registry holding every schema/*.json under its $id."""
    return Registry().with_resources(
        (s["$id"], Resource.from_contents(s, default_specification=DRAFT202012)) for s in _schemas().values()
    )


def schema(kind: str) -> dict:
    if kind not in KINDS:
        raise ValueError(f"unknown payload kind {kind!r}; expected one of {', '.join(KINDS)}")
    return _schemas()[kind]


@cache
def _validator(kind: str):
    return _Validator(schema(kind), registry=registry(), format_checker=None)


def _check_message_id(msg: Any, path: str) -> None:
    if isinstance(msg, dict) and msg.get("id") != f"{msg.get('conv')}:{msg.get('seq')}":
        raise ValidationError(f"{path}: id {msg.get('id')!r} is not \"{{conv}}:{{seq}}\"")


def _specific(err: ValidationError) -> ValidationError | None:
    # "not valid under any of the given schemas" says little: when exactly one oneOf branch has
    # its discriminator (a top-level const: event, op, type) right, report that branch's error.
    if err.validator != "oneOf" or not err.context:
        return None
    branches: dict[Any, list[ValidationError]] = {}
    for e in err.context:
        branches.setdefault(e.relative_schema_path[0], []).append(e)
    live = [errs for errs in branches.values()
            if not any(e.validator == "const" and len(e.relative_path) == 1 for e in errs)]
    return _pick(live[0]) if len(live) == 1 else None


def _pick(errors: list[ValidationError]) -> ValidationError:
    for e in errors:
        if (s := _specific(e)) is not None:
            return s
    return best_match(errors)


def validate(kind: str, obj: Any) -> None:
    """Raise jsonschema.ValidationError unless obj is a valid payload of this kind."""
    if isinstance(obj, (bytes, bytearray)):
        obj = json.loads(obj)
    errors = list(_validator(kind).iter_errors(obj))
    if errors:
        raise _pick(errors)
    if kind == "message":
        _check_message_id(obj, "message")
    elif kind == "reply" and obj.get("ok") is True:
        if obj["op"] == "history":
            for i, m in enumerate(obj["messages"]):
                _check_message_id(m, f"messages[{i}]")
        elif obj["op"] == "conv.list":
            for i, c in enumerate(obj["conversations"]):
                if c["last"] is not None:
                    _check_message_id(c["last"], f"conversations[{i}].last")


def _resolve_pointer(doc: Any, pointer: str) -> Any:
    for token in pointer.lstrip("/").split("/") if pointer.strip("/") else []:
        token = token.replace("~1", "/").replace("~0", "~")
        doc = doc[int(token)] if isinstance(doc, list) else doc[token]
    return doc


def validate_asyncapi_loads() -> dict:
    """Parse schema/asyncapi.yaml and check that every $ref resolves: local refs within the
    document, file refs to an existing schema/ file (and its #fragment, if any). Returns the
    parsed document; raises AssertionError listing every broken ref."""
    doc = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and str(doc.get("asyncapi")) == "2.6.0", "not an AsyncAPI 2.6.0 document"
    problems: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                file, _, fragment = ref.partition("#")
                try:
                    if file:
                        if not (SCHEMA_DIR / file).is_file():
                            raise FileNotFoundError(file)
                        target = json.loads((SCHEMA_DIR / file).read_text(encoding="utf-8"))
                    else:
                        target = doc
                    _resolve_pointer(target, fragment)
                except (OSError, KeyError, IndexError, ValueError) as e:
                    problems.append(f"{ref}: {e!r}")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert not problems, "unresolved $ref in asyncapi.yaml: " + "; ".join(problems)
    return doc
