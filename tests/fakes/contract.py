"""Check a fake's traffic against the provider's published contract (tests/contracts/).

Both fakes validate every request they receive and every response they send: a request the contract does
not allow is answered with the provider's 400 AND recorded (our provider code is then wrong); a response
that does not match the contract's schema is recorded (the fake is then wrong). Tests assert that nothing
was recorded. Object schemas are checked strictly (`additionalProperties: false`), so neither side can
send a field the contract does not name.
"""

from __future__ import annotations

import base64
import copy
import email.utils
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema

CONTRACTS = Path(__file__).resolve().parent.parent / "contracts"


def _strict(schema: Any) -> Any:
    """Deep copy with additionalProperties: false on every object schema that lists its properties."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(x) for x in schema]
    return schema


def _template_regex(template: str) -> re.Pattern[str]:
    """/v1/Keys/{Sid} -> ^/v1/Keys/(?P<Sid>[^/]+)$ (a `:verb` suffix stays literal)."""
    parts = re.split(r"(\{[^}]+\})", template)
    pattern = "".join(f"(?P<{p[1:-1].replace('+', '')}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{pattern}$")


@dataclass
class Violations:
    requests: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)

    def clear(self) -> None:
        self.requests.clear()
        self.responses.clear()


# --- OpenAPI 3.0 (Twilio) -------------------------------------------------------------------------
def _rfc2822(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        return email.utils.parsedate_to_datetime(value) is not None
    except (TypeError, ValueError):
        return False


class OpenApiContract:
    def __init__(self, path: Path) -> None:
        from openapi_schema_validator import OAS30Validator

        self.document = json.loads(path.read_text())
        self._validator_cls = OAS30Validator
        checker = copy.deepcopy(OAS30Validator.FORMAT_CHECKER)
        checker.checks("date-time-rfc-2822")(_rfc2822)
        self._format_checker = checker
        self._routes = [(_template_regex(template), template) for template in self.document["paths"]]
        self.violations = Violations()

    def _resolve(self, schema: Any) -> Any:
        if isinstance(schema, dict):
            if "$ref" in schema:
                name = schema["$ref"].rsplit("/", 1)[-1]
                merged = {**self._resolve(self.document["components"]["schemas"][name]),
                          **{k: v for k, v in schema.items() if k not in ("$ref", "description")}}
                return merged
            return {k: self._resolve(v) for k, v in schema.items()}
        if isinstance(schema, list):
            return [self._resolve(x) for x in schema]
        return schema

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any], dict[str, str]] | None:
        for regex, template in self._routes:
            if (match := regex.match(path)) and method.lower() in self.document["paths"][template]:
                return template, self.document["paths"][template][method.lower()], match.groupdict()
        return None

    def _errors(self, instance: Any, schema: Any) -> list[str]:
        validator = self._validator_cls(_strict(self._resolve(schema)), format_checker=self._format_checker)
        return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(instance)]

    def check_request(self, method: str, path: str, query: dict[str, str], form: dict[str, str]) -> list[str]:
        found = self.operation(method, path)
        if found is None:
            problems = [f"{method} {path}: no such operation in the contract"]
        else:
            template, op, path_params = found
            problems = []
            for param in op.get("parameters", ()):
                where = {"path": path_params, "query": query}.get(param["in"], {})
                if param["name"] not in where:
                    if param.get("required"):
                        problems.append(f"{param['in']} parameter {param['name']} is required")
                    continue
                value: Any = where[param["name"]]
                if param["schema"].get("type") == "integer":
                    try:
                        value = int(value)
                    except ValueError:
                        problems.append(f"{param['name']}: {value!r} is not an integer")
                        continue
                problems += [f"{param['name']}: {e}" for e in self._errors(value, param["schema"])]
            unknown = set(query) - {p["name"] for p in op.get("parameters", ()) if p["in"] == "query"}
            problems += [f"query parameter {name} is not in the contract" for name in sorted(unknown)]
            body = ((op.get("requestBody") or {}).get("content") or {}).get("application/x-www-form-urlencoded")
            if body is not None:
                problems += [f"form {e}" for e in self._errors(form, body["schema"])]
            elif form:
                problems.append("a form body where the contract takes none")
        self.violations.requests += [f"{method} {path}: {p}" for p in problems]
        return problems

    def check_response(self, method: str, path: str, status: int, body: Any) -> list[str]:
        found = self.operation(method, path)
        if found is None or status >= 400:
            return []  # error documents are Twilio's generic format, outside the per-operation contract
        _, op, _ = found
        response = op.get("responses", {}).get(str(status))
        if response is None:
            problems = [f"status {status} is not a documented response"]
        else:
            content = (response.get("content") or {}).get("application/json")
            if content is None:
                problems = [] if body is None else ["a body where the contract documents none"]
            else:
                problems = self._errors(body, content["schema"])
        self.violations.responses += [f"{method} {path} -> {status}: {p}" for p in problems]
        return problems


# --- Google API discovery documents (GCP IAM) ------------------------------------------------------
def _google_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        datetime.strptime(re.sub(r"\.\d+Z$", "Z", value), "%Y-%m-%dT%H:%M:%SZ")
        return True
    except ValueError:
        return False


def _base64(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        base64.b64decode(value, validate=True)
        return True
    except ValueError:
        try:
            base64.urlsafe_b64decode(value)
            return True
        except ValueError:
            return False


class DiscoveryContract:
    """A Google API discovery document as a contract: methods (HTTP verb + flatPath), parameters, and the
    request/response schemas, converted to JSON Schema."""

    def __init__(self, path: Path) -> None:
        self.document = json.loads(path.read_text())
        self.methods: list[tuple[str, re.Pattern[str], dict[str, Any]]] = []
        self._collect(self.document.get("resources", {}))
        # Most literal text first, so ".../keys/{keysId}:disable" never matches ".../keys/{keysId}".
        self.methods.sort(key=lambda m: -len(re.sub(r"\{[^}]+\}", "", m[2]["flatPath"])))
        definitions = {name: self._convert(schema) for name, schema in self.document["schemas"].items()}
        self._definitions = definitions
        checker = jsonschema.FormatChecker()
        checker.checks("google-datetime")(_google_datetime)
        checker.checks("byte")(_base64)
        self._format_checker = checker
        self.violations = Violations()

    def _collect(self, resources: dict[str, Any]) -> None:
        for resource in resources.values():
            for method in resource.get("methods", {}).values():
                path = "/" + method["flatPath"]
                self.methods.append((method["httpMethod"], _template_regex(path), method))
            self._collect(resource.get("resources", {}))

    def _convert(self, schema: Any) -> Any:
        if isinstance(schema, dict):
            out: dict[str, Any] = {}
            for key, value in schema.items():
                if key == "$ref":
                    out["$ref"] = f"#/definitions/{value}"
                elif key in ("id", "description", "enumDescriptions", "readOnly", "deprecated", "annotations", "location",
                             "repeated", "required"):
                    continue
                elif key == "properties":
                    out[key] = {name: self._convert(prop) for name, prop in value.items()}
                elif key == "format" and value in ("int64", "uint64", "int32", "uint32", "double", "float"):
                    continue  # numbers travel as JSON strings/numbers; the type says which
                else:
                    out[key] = self._convert(value)
            if out.get("type") == "object" and "properties" in out:
                out["additionalProperties"] = False
            return out
        if isinstance(schema, list):
            return [self._convert(x) for x in schema]
        return schema

    def method(self, http_method: str, path: str) -> tuple[dict[str, Any], dict[str, str]] | None:
        for verb, regex, method in self.methods:
            if verb == http_method and (match := regex.match(path)):
                return method, match.groupdict()
        return None

    def _errors(self, instance: Any, schema_name: str) -> list[str]:
        schema = {"$ref": f"#/definitions/{schema_name}", "definitions": self._definitions}
        validator = jsonschema.Draft7Validator(schema, format_checker=self._format_checker)
        return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(instance)]

    def check_request(self, http_method: str, path: str, query: dict[str, list[str]], body: Any) -> list[str]:
        found = self.method(http_method, path)
        if found is None:
            problems = [f"{http_method} {path}: no such method in the discovery document"]
        else:
            method, _ = found
            problems = []
            parameters = {**self.document.get("parameters", {}), **method.get("parameters", {})}
            for name, values in query.items():
                spec = parameters.get(name)
                if spec is None or spec.get("location") != "query":
                    problems.append(f"query parameter {name} is not a parameter of {method['id']}")
                    continue
                if len(values) > 1 and not spec.get("repeated"):
                    problems.append(f"query parameter {name} is not repeated")
                for value in values:
                    if "enum" in spec and value not in spec["enum"]:
                        problems.append(f"query parameter {name}: {value!r} not in {spec['enum']}")
                    if spec.get("type") == "integer" and not value.lstrip("-").isdigit():
                        problems.append(f"query parameter {name}: {value!r} is not an integer")
            request = method.get("request")
            if request is not None:
                problems += [f"body {e}" for e in self._errors(body if body is not None else {}, request["$ref"])]
            elif body not in (None, {}):
                problems.append(f"{method['id']} takes no request body")
        self.violations.requests += [f"{http_method} {path}: {p}" for p in problems]
        return problems

    def check_response(self, http_method: str, path: str, status: int, body: Any) -> list[str]:
        found = self.method(http_method, path)
        if found is None or status >= 400:
            return []  # errors use the generic {"error": {code, message, status}} format of Google APIs
        method, _ = found
        problems = self._errors(body, method["response"]["$ref"]) if "response" in method else []
        self.violations.responses += [f"{http_method} {path} -> {status}: {p}" for p in problems]
        return problems
