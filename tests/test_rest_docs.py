"""docs/rest.md is what ``python -m webmacs.openapi --markdown`` writes from the OpenAPI
document, names every operation, and its examples pass the handlers' own validation
and the document's response schemas."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema_rs

from webmacs import openapi
from webmacs.restdoc import Examples, markdown
from webmacs.validation import validate

REPO = Path(__file__).resolve().parent.parent
REST_MD = REPO / "docs" / "rest.md"
REGENERATE = "python -m webmacs.openapi --markdown > docs/rest.md"


def test_rest_md_is_generated_from_the_document():
    assert REST_MD.read_text() == markdown(openapi.build()), f"docs/rest.md is stale: run `{REGENERATE}`"


def test_the_module_command_writes_the_same_page():
    proc = subprocess.run([sys.executable, "-m", "webmacs.openapi", "--markdown"], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == REST_MD.read_text()


def test_every_operation_has_a_section_with_examples():
    text = REST_MD.read_text()
    sections = dict(re.findall(r"^### `([A-Z]+ \S+)`\n(.*?)(?=^##)", text + "\n##", re.S | re.M))
    for path, item in openapi.build()["paths"].items():
        for method, op in item.items():
            body = sections.get(f"{method.upper()} {path}")
            assert body is not None, f"{method.upper()} {path} missing from docs/rest.md"
            assert "Request" in body and "Response `" in body, (path, method)
            if "application/json" in op.get("requestBody", {}).get("content", {}):
                assert "```json" in body.split("Response `")[0], (path, method)


def test_examples_pass_validation_and_match_the_response_schemas():
    doc = openapi.build()
    examples = Examples(doc)
    checked = 0
    for _module, pattern, handler in openapi.routes():
        for method in openapi.handler_methods(handler):
            op = openapi.OPERATIONS[handler][method]
            if op.body is not None:
                schema = doc["paths"][openapi.path_template(pattern, op.params)][method]["requestBody"]
                example = examples.of(schema["content"]["application/json"]["schema"], partial=op.partial)
                validate(example, op.body, partial=op.partial)  # raises ValidationError naming the field
                checked += 1
            if op.response is not None and op.media == "application/json":
                schema = {**op.response, "components": doc["components"]}
                value = examples.of(op.response)
                assert jsonschema_rs.validator_for(schema).is_valid(value), (pattern, method, json.dumps(value))
                checked += 1
    assert checked > 100


def test_readme_and_notes_link_the_reference():
    assert "(docs/rest.md)" in (REPO / "README.md").read_text()
    assert "(rest.md)" in (REPO / "docs" / "rest-notes.md").read_text()
