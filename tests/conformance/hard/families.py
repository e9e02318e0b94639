"""The hard set's schema families, modelled on real-world structures (schema-store configs,
OpenAPI fragments, event envelopes, older-draft documents, reference tricks, combinators).

Each family is written once in Draft 2020-12 form with ``$defs``; ``generate.py`` derives
the variants (draft-07 / draft-04 spellings, a closed root, reversed declaration order, an
envelope reaching it through a ``$ref`` chain) and the instances. Hand-written instances
sit next to each family: ``valid`` and ``invalid`` (labels are re-checked by jsonschema).
"""

from __future__ import annotations

from typing import Any

S = {"type": "string"}
I = {"type": "integer"}  # noqa: E741
B = {"type": "boolean"}
N = {"type": "number"}
SEMVER = {"type": "string", "pattern": r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$"}
NAME = {"type": "string", "pattern": "^[a-z][a-z0-9-]*$", "maxLength": 40}


def obj(props: dict[str, Any], required: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    out.update(kw)
    return out


def arr(items: Any, **kw: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **kw}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


Family = tuple[str, str, dict[str, Any], list[Any], list[Any]]  # category, name, schema, ok, bad

FAMILIES: list[Family] = [
    ("configs", "package-manifest", obj({
        "name": NAME, "version": SEMVER, "private": B, "description": S,
        "scripts": {"type": "object", "additionalProperties": S},
        "dependencies": ref("deps"), "devDependencies": ref("deps"),
        "engines": obj({"node": S, "npm": S}),
        "bin": {"anyOf": [S, {"type": "object", "additionalProperties": S}]},
    }, ["name", "version"], **{"$defs": {"deps": {
        "type": "object", "patternProperties": {"^(@[a-z0-9-]+/)?[a-z0-9.-]+$": S},
        "additionalProperties": False}}}),
     [{"version": "1.0.0", "name": "left-pad", "scripts": {"test": "jest"},
       "dependencies": {"@babel/core": "^7.0.0"}, "bin": "cli.js"},
      {"$schema": "https://json.schemastore.org/package", "name": "a", "version": "0.1.0"}],
     [{"name": "Bad Name", "version": "1.0.0"}, {"name": "a", "version": "1.0"},
      {"name": "a", "version": "1.0.0", "dependencies": {"UPPER": "1"}}]),
    ("configs", "ci-workflow", obj({
        "name": S,
        "on": {"anyOf": [S, arr(S), {"type": "object"}]},
        "env": {"type": "object", "additionalProperties": {"anyOf": [S, N, B]}},
        "jobs": {"type": "object", "patternProperties": {
            "^[_a-zA-Z][a-zA-Z0-9_-]*$": ref("job")}, "additionalProperties": False,
            "minProperties": 1},
    }, ["on", "jobs"], **{"$defs": {
        "job": obj({"runs-on": {"anyOf": [S, arr(S)]}, "needs": {"anyOf": [S, arr(S)]},
                    "steps": arr(ref("step"), minItems=1), "timeout-minutes": N},
                   ["runs-on"]),
        "step": {"type": "object", "properties": {"name": S, "uses": S, "run": S,
                                                  "with": {"type": "object"}},
                 "anyOf": [{"required": ["uses"]}, {"required": ["run"]}]}}}),
     [{"jobs": {"build": {"steps": [{"run": "make", "name": "b"}, {"uses": "a/b@v1"}],
                          "runs-on": "ubuntu-latest"}}, "on": "push"},
      {"on": ["push", "pull_request"], "name": "CI",
       "jobs": {"t": {"runs-on": ["self-hosted"], "needs": "build"}}}],
     [{"on": "push", "jobs": {"1bad": {"runs-on": "x"}}},
      {"on": "push", "jobs": {"b": {"runs-on": "x", "steps": [{"name": "no action"}]}}},
      {"jobs": {"b": {"runs-on": "x"}}}]),
    ("configs", "eslint", obj({
        "root": B, "extends": {"anyOf": [S, arr(S)]},
        "env": {"type": "object", "additionalProperties": B},
        "rules": {"type": "object", "additionalProperties": ref("rule")},
        "overrides": arr(obj({"files": {"anyOf": [S, arr(S)]},
                              "rules": {"type": "object",
                                        "additionalProperties": ref("rule")}}, ["files"])),
    }, **{"$defs": {"rule": {"anyOf": [
        {"enum": ["off", "warn", "error"]}, {"type": "integer", "minimum": 0, "maximum": 2},
        {"type": "array", "prefixItems": [{"enum": ["off", "warn", "error", 0, 1, 2]}],
         "minItems": 1}]}}}),
     [{"rules": {"semi": ["error", "always"], "quotes": 2, "no-var": "off"}, "root": True},
      {"overrides": [{"rules": {"x": "warn"}, "files": ["*.ts"]}], "env": {"node": True}}],
     [{"rules": {"semi": "fatal"}}, {"rules": {"semi": 3}}, {"overrides": [{"rules": {}}]}]),
    ("configs", "docker-compose", obj({
        "version": S,
        "services": {"type": "object", "additionalProperties": ref("service")},
        "volumes": {"type": "object", "additionalProperties": {"type": ["object", "null"]}},
    }, ["services"], **{"$defs": {"service": obj({
        "image": S, "build": {"anyOf": [S, obj({"context": S, "dockerfile": S})]},
        "ports": arr({"anyOf": [S, I]}),
        "environment": {"anyOf": [arr(S), {"type": "object", "additionalProperties": {
            "type": ["string", "number", "boolean", "null"]}}]},
        "depends_on": arr(S, uniqueItems=True), "restart": {"enum": [
            "no", "always", "on-failure", "unless-stopped"]}},
        additionalProperties=False)}}),
     [{"services": {"web": {"ports": ["80:80", 443], "image": "nginx",
                            "environment": {"A": "1", "B": None}},
                    "db": {"build": {"dockerfile": "Dockerfile", "context": "."}}},
       "volumes": {"data": None}}],
     [{"services": {"web": {"restart": "sometimes"}}}, {"services": {"w": {"img": "x"}}},
      {"volumes": {}}]),
    ("configs", "tsconfig", obj({
        "compilerOptions": obj({
            "target": {"enum": ["es5", "es2015", "es2020", "esnext"]},
            "module": {"enum": ["commonjs", "esnext", "nodenext"]},
            "strict": B, "outDir": S, "paths": {"type": "object",
                                                 "additionalProperties": arr(S)},
            "lib": arr(S)}),
        "include": arr(S), "exclude": arr(S), "extends": S,
        "references": arr(obj({"path": S}, ["path"]))}),
     [{"include": ["src"], "compilerOptions": {"strict": True, "target": "es2020",
                                               "paths": {"@/*": ["src/*"]}}}],
     [{"compilerOptions": {"target": "es3"}}, {"references": [{}]},
      {"compilerOptions": {"strict": "yes"}}]),
    ("configs", "markdownlint", {
        "type": "object", "properties": {"default": B, "extends": {"type": ["string", "null"]}},
        "patternProperties": {"^MD\\d{3}$": {"anyOf": [B, obj({"level": I, "style": S})]}},
        "additionalProperties": {"type": "boolean"}},
     [{"MD013": {"style": "x", "level": 1}, "default": True, "custom-rule": False},
      {"MD001": False, "extends": None}],
     [{"MD013": "yes"}, {"custom": 1}, {"default": "true"}]),
    ("configs", "dependabot", obj({
        "version": {"const": 2},
        "updates": arr(obj({
            "package-ecosystem": {"enum": ["npm", "pip", "docker", "github-actions"]},
            "directory": S,
            "schedule": obj({"interval": {"enum": ["daily", "weekly", "monthly"]},
                             "day": S, "time": {"type": "string",
                                                "pattern": "^\\d{2}:\\d{2}$"}},
                            ["interval"]),
            "open-pull-requests-limit": {"type": "integer", "minimum": 0},
            "ignore": arr(obj({"dependency-name": S, "versions": arr(S)},
                              ["dependency-name"]))},
            ["package-ecosystem", "directory", "schedule"]), minItems=1)},
        ["version", "updates"]),
     [{"updates": [{"schedule": {"interval": "weekly", "time": "09:00"}, "directory": "/",
                    "package-ecosystem": "pip"}], "version": 2}],
     [{"version": 1, "updates": []}, {"version": 2, "updates": [
         {"package-ecosystem": "npm", "directory": "/", "schedule": {"interval": "hourly"}}]},
      {"version": 2, "updates": [{"package-ecosystem": "npm", "directory": "/",
                                  "schedule": {"interval": "daily", "time": "9am"}}]}]),
    ("configs", "prettier", {"$ref": "#/$defs/options", "properties": {
        "overrides": arr(obj({"files": {"anyOf": [S, arr(S)]},
                              "options": ref("options")}, ["files"]))},
        "$defs": {"options": obj({"printWidth": {"type": "integer", "minimum": 1},
                                  "semi": B, "singleQuote": B,
                                  "trailingComma": {"enum": ["all", "es5", "none"]},
                                  "endOfLine": {"enum": ["lf", "crlf", "cr", "auto"]}})}},
     [{"overrides": [{"options": {"semi": False}, "files": "*.md"}], "printWidth": 100}],
     [{"printWidth": 0}, {"trailingComma": "some"}, {"overrides": [{"options": {}}]}]),
    ("configs", "logging-dictconfig", obj({
        "version": {"const": 1}, "disable_existing_loggers": B,
        "formatters": {"type": "object", "additionalProperties": obj({
            "format": S, "datefmt": S})},
        "handlers": {"type": "object", "additionalProperties": obj({
            "class": S, "level": ref("level"), "formatter": S, "filename": S},
            ["class"])},
        "loggers": {"type": "object", "additionalProperties": obj({
            "level": ref("level"), "handlers": arr(S), "propagate": B})},
        "root": obj({"level": ref("level"), "handlers": arr(S)})}, ["version"],
        **{"$defs": {"level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]}}}),
     [{"handlers": {"console": {"level": "INFO", "class": "logging.StreamHandler"}},
       "version": 1, "root": {"handlers": ["console"], "level": "WARNING"}}],
     [{"version": 2}, {"version": 1, "handlers": {"h": {"level": "INFO"}}},
      {"version": 1, "root": {"level": "TRACE"}}]),
    ("configs", "renovate", obj({
        "extends": arr(S), "timezone": S, "schedule": arr(S),
        "packageRules": arr({"type": "object", "properties": {
            "matchPackageNames": arr(S), "matchPackagePatterns": arr(S),
            "matchUpdateTypes": arr({"enum": ["major", "minor", "patch", "pin", "digest"]}),
            "automerge": B, "groupName": S, "enabled": B},
            "anyOf": [{"required": ["matchPackageNames"]},
                      {"required": ["matchPackagePatterns"]},
                      {"required": ["matchUpdateTypes"]}]})}),
     [{"packageRules": [{"automerge": True, "matchUpdateTypes": ["minor", "patch"]},
                        {"groupName": "lint", "matchPackagePatterns": ["^eslint"]}],
       "extends": ["config:base"]}],
     [{"packageRules": [{"automerge": True}]},
      {"packageRules": [{"matchUpdateTypes": ["huge"]}]}, {"extends": "config:base"}]),
    ("openapi", "openapi-paths", obj({
        "openapi": {"type": "string", "pattern": "^3\\.\\d+\\.\\d+$"},
        "info": obj({"title": S, "version": S}, ["title", "version"]),
        "paths": {"type": "object", "patternProperties": {"^/": ref("pathItem")},
                  "additionalProperties": False}},
        ["openapi", "info", "paths"], **{"$defs": {
            "pathItem": {"type": "object", "patternProperties": {
                "^(get|put|post|delete|patch)$": ref("operation")}},
            "operation": obj({"summary": S, "operationId": S,
                              "parameters": arr(ref("parameter")),
                              "responses": {"type": "object", "patternProperties": {
                                  "^([1-5]\\d\\d|default)$": ref("response")},
                                  "minProperties": 1}}, ["responses"]),
            "parameter": obj({"name": S, "in": {"enum": ["query", "header", "path",
                                                         "cookie"]},
                              "required": B, "schema": {"type": "object"}},
                             ["name", "in"]),
            "response": obj({"description": S, "content": {"type": "object"}},
                            ["description"])}}),
     [{"paths": {"/pets": {"get": {"responses": {"200": {"description": "ok"}},
                                   "parameters": [{"in": "query", "name": "limit"}]}}},
       "info": {"version": "1", "title": "Pets"}, "openapi": "3.0.3"}],
     [{"openapi": "2.0", "info": {"title": "t", "version": "1"}, "paths": {}},
      {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"pets": {}}},
      {"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
       "paths": {"/p": {"get": {"responses": {"200": {}}}}}}]),
    ("openapi", "openapi-components", obj({
        "pet": ref("Pet"), "pets": arr(ref("Pet")), "error": ref("Error")}, ["pet"],
        **{"$defs": {
            "Pet": {"allOf": [ref("NewPet"), obj({"id": {"type": "integer",
                                                          "format": "int64"}}, ["id"])]},
            "NewPet": obj({"name": S, "tag": S, "owner": ref("Owner")}, ["name"]),
            "Owner": obj({"email": {"type": "string", "format": "email"},
                          "address": ref("Address")}),
            "Address": obj({"street": S, "zip": {"type": "string", "pattern": "^\\d{5}$"}}),
            "Error": obj({"code": {"type": "integer", "format": "int32"}, "message": S},
                         ["code", "message"])}}),
     [{"pet": {"id": 1, "name": "rex", "owner": {"address": {"zip": "12345"}}},
       "error": {"message": "m", "code": 4}}],
     [{"pet": {"name": "rex"}}, {"pet": {"id": 1}},
      {"pet": {"id": 1, "name": "r", "owner": {"address": {"zip": "1234"}}}}]),
    ("openapi", "jsonapi-resource", obj({
        "data": {"anyOf": [ref("resource"), arr(ref("resource")), {"type": "null"}]},
        "included": arr(ref("resource")), "meta": {"type": "object"},
        "links": ref("links")}, ["data"], **{"$defs": {
            "resource": obj({"type": S, "id": S, "attributes": {"type": "object"},
                             "relationships": {"type": "object", "additionalProperties":
                                               obj({"data": {"anyOf": [
                                                   ref("linkage"), arr(ref("linkage")),
                                                   {"type": "null"}]}})},
                             "links": ref("links")}, ["type", "id"]),
            "linkage": obj({"type": S, "id": S}, ["type", "id"], additionalProperties=False),
            "links": {"type": "object", "additionalProperties": {"anyOf": [
                {"type": "string", "format": "uri"}, obj({"href": S}, ["href"])]}}}}),
     [{"data": [{"id": "1", "type": "posts", "relationships": {
         "author": {"data": {"id": "9", "type": "people"}}}}], "links": {
             "self": "http://example.com/posts"}}],
     [{"data": {"type": "posts"}}, {"data": {"type": "p", "id": "1", "relationships": {
         "a": {"data": {"type": "x", "id": "1", "extra": 1}}}}}, {}]),
    ("openapi", "openapi-parameter-oneof", obj({
        "parameters": arr({"oneOf": [ref("queryParam"), ref("pathParam"), ref("refObj")]})},
        ["parameters"], **{"$defs": {
            "queryParam": obj({"in": {"const": "query"}, "name": S, "required": B},
                              ["in", "name"]),
            "pathParam": obj({"in": {"const": "path"}, "name": S,
                              "required": {"const": True}}, ["in", "name", "required"]),
            "refObj": obj({"$ref": S}, ["$ref"], additionalProperties=False)}}),
     [{"parameters": [{"name": "id", "in": "path", "required": True},
                      {"$ref": "#/components/parameters/limit"}, {"in": "query",
                                                                  "name": "q"}]}],
     [{"parameters": [{"in": "path", "name": "id"}]},
      {"parameters": [{"in": "body", "name": "x"}]}, {"parameters": [{"$ref": 1}]}]),
    ("events", "cloudevent", obj({
        "specversion": {"const": "1.0"}, "id": {"type": "string", "minLength": 1},
        "source": {"type": "string", "format": "uri-reference"},
        "type": {"type": "string", "minLength": 1},
        "datacontenttype": S, "time": {"type": "string", "format": "date-time"},
        "data": True}, ["specversion", "id", "source", "type"]),
     [{"type": "com.example.created", "source": "/orders", "id": "A-1",
       "specversion": "1.0", "time": "2024-01-02T03:04:05Z", "data": {"n": 1}}],
     [{"specversion": "0.3", "id": "1", "source": "/", "type": "t"},
      {"specversion": "1.0", "id": "", "source": "/", "type": "t"},
      {"specversion": "1.0", "id": "1", "source": "/", "type": "t", "time": "yesterday"}]),
    ("events", "order-events-ref-chain", {
        "type": "object", "properties": {
            "event": {"enum": ["created", "shipped"]},
            "payload": ref("Payload")}, "required": ["event", "payload"],
        "$defs": {"Payload": {"$ref": "#/$defs/Order"},
                  "Order": {"type": "object", "properties": {
                      "id": ref("OrderId"), "lines": arr(ref("Line"), minItems=1),
                      "customer": ref("Customer")}, "required": ["id", "lines"]},
                  "OrderId": {"$ref": "#/$defs/Uuid"},
                  "Uuid": {"type": "string", "format": "uuid"},
                  "Line": obj({"sku": S, "qty": {"type": "integer", "minimum": 1},
                               "price": ref("Money")}, ["sku", "qty"]),
                  "Money": obj({"amount": {"type": "number", "minimum": 0},
                                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}},
                               ["amount", "currency"]),
                  "Customer": obj({"id": ref("Uuid"), "email": {"type": "string",
                                                                "format": "email"}})}},
     [{"payload": {"lines": [{"qty": 2, "sku": "A", "price": {"currency": "EUR",
                                                                "amount": 3.5}}],
                   "id": "123e4567-e89b-12d3-a456-426614174000"}, "event": "created"}],
     [{"event": "created", "payload": {"id": "nope", "lines": [{"sku": "a", "qty": 1}]}},
      {"event": "created", "payload": {"id": "123e4567-e89b-12d3-a456-426614174000",
                                       "lines": []}},
      {"event": "x", "payload": {}}]),
    ("events", "tagged-union-events", {
        "oneOf": [ref("UserCreated"), ref("UserDeleted"), ref("UserRenamed")],
        "$defs": {
            "base": obj({"at": {"type": "string", "format": "date-time"}, "user": S},
                        ["at", "user"]),
            "UserCreated": {"allOf": [ref("base"), obj({"type": {"const": "created"},
                                                        "email": S}, ["type"])]},
            "UserDeleted": {"allOf": [ref("base"), obj({"type": {"const": "deleted"},
                                                        "reason": S}, ["type"])]},
            "UserRenamed": {"allOf": [ref("base"), obj({"type": {"const": "renamed"},
                                                        "from": S, "to": S},
                                                       ["type", "from", "to"])]}}},
     [{"type": "renamed", "to": "b", "from": "a", "user": "u1",
       "at": "2024-05-01T00:00:00Z"}],
     [{"type": "renamed", "user": "u", "at": "2024-05-01T00:00:00Z"},
      {"type": "other", "user": "u", "at": "2024-05-01T00:00:00Z"},
      {"type": "created", "at": "2024-05-01T00:00:00Z"}]),
    ("events", "geojson", {"$ref": "#/$defs/Geometry", "$defs": {
        "pos": arr(N, minItems=2, maxItems=3),
        "Point": obj({"type": {"const": "Point"}, "coordinates": ref("pos")},
                     ["type", "coordinates"]),
        "LineString": obj({"type": {"const": "LineString"},
                           "coordinates": arr(ref("pos"), minItems=2)},
                          ["type", "coordinates"]),
        "Polygon": obj({"type": {"const": "Polygon"},
                        "coordinates": arr(arr(ref("pos"), minItems=4))},
                       ["type", "coordinates"]),
        "Collection": obj({"type": {"const": "GeometryCollection"},
                           "geometries": arr(ref("Geometry"))}, ["type", "geometries"]),
        "Geometry": {"anyOf": [ref("Point"), ref("LineString"), ref("Polygon"),
                               ref("Collection")]}}},
     [{"coordinates": [1.5, 2], "type": "Point"},
      {"geometries": [{"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
                      {"type": "GeometryCollection", "geometries": []}],
       "type": "GeometryCollection"}],
     [{"type": "Point", "coordinates": [1]}, {"type": "LineString", "coordinates": [[0, 0]]},
      {"type": "Circle", "coordinates": [0, 0]}]),
    ("events", "audit-log", obj({
        "actor": ref("principal"), "target": ref("principal"),
        "action": {"type": "string", "pattern": "^[a-z]+(\\.[a-z]+)+$"},
        "context": {"type": "object", "properties": {"ip": {"type": "string",
                                                            "format": "ipv4"}},
                    "patternProperties": {"^x-": S}, "additionalProperties": False},
        "changes": arr(obj({"field": S, "old": True, "new": True}, ["field"]))},
        ["actor", "action"], **{"$defs": {"principal": obj({
            "kind": {"enum": ["user", "service"]}, "id": S}, ["kind", "id"])}}),
     [{"action": "repo.delete", "context": {"x-req": "r1", "ip": "10.0.0.1"},
       "actor": {"id": "u", "kind": "user"}, "changes": [{"new": 1, "field": "f"}]}],
     [{"actor": {"kind": "user", "id": "u"}, "action": "delete"},
      {"actor": {"kind": "user", "id": "u"}, "action": "a.b", "context": {"y": "1"}},
      {"actor": {"kind": "robot", "id": "u"}, "action": "a.b"}]),
    ("refs", "recursive-tree", {"$ref": "#/$defs/node", "$defs": {"node": obj({
        "name": S, "children": arr({"$ref": "#/$defs/node"}),
        "meta": {"type": "object", "additionalProperties": S}}, ["name"])}},
     [{"children": [{"name": "b", "children": [{"name": "c"}]}], "name": "a"}],
     [{"children": []}, {"name": "a", "children": [{"children": []}]},
      {"name": "a", "meta": {"k": 1}}]),
    ("refs", "linked-list-root-ref", obj({"value": I, "next": {"anyOf": [
        {"$ref": "#"}, {"type": "null"}]}}, ["value"]),
     [{"next": {"value": 2, "next": None}, "value": 1}],
     [{"value": 1, "next": {"next": None}}, {"value": "1"}, {"value": 1, "next": 3}]),
    ("refs", "refs-into-properties", obj({
        "billing": obj({"street": S, "city": S, "zip": {"type": "string",
                                                        "pattern": "^[0-9]{5}$"}},
                       ["street", "city"]),
        "shipping": {"$ref": "#/properties/billing"},
        "alternates": arr({"$ref": "#/properties/billing"}),
        "contact": {"$ref": "#/$defs/contact"}}, ["billing"],
        **{"$defs": {"contact": obj({"phone": S,
                                     "address": {"$ref": "#/properties/billing"}})}}),
     [{"shipping": {"city": "B", "street": "s"}, "billing": {"city": "A", "street": "s",
                                                             "zip": "01234"},
       "contact": {"address": {"street": "x", "city": "y"}}}],
     [{"billing": {"street": "s"}}, {"billing": {"street": "s", "city": "c"},
                                     "shipping": {"city": "c"}},
      {"billing": {"street": "s", "city": "c"}, "alternates": [{"zip": "1"}]}]),
    ("refs", "defs-definitions-mix", {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/A"},
                                         "b": {"$ref": "#/definitions/B"},
                                         "c": {"$ref": "#/definitions/B/properties/inner"}},
        "required": ["a"],
        "$defs": {"A": obj({"b": {"$ref": "#/definitions/B"}, "n": I})},
        "definitions": {"B": obj({"inner": {"type": "string", "enum": ["x", "y"]},
                                  "k": {"$ref": "#/$defs/A/properties/n"}})}},
     [{"c": "y", "a": {"n": 1, "b": {"inner": "x", "k": 2}}, "b": {}}],
     [{"a": {"n": "1"}}, {"a": {}, "c": "z"}, {"a": {"b": {"k": 1.5}}}]),
    ("refs", "id-relative-refs", {
        "$id": "https://example.com/schemas/order.json", "type": "object",
        "properties": {"customer": {"$ref": "customer.json"},
                       "items": arr({"$ref": "item.json#/$defs/line"})},
        "required": ["customer"],
        "$defs": {"customer": {"$id": "customer.json", "type": "object",
                               "properties": {"name": S, "address": {
                                   "$ref": "#/$defs/address"}},
                               "required": ["name"],
                               "$defs": {"address": obj({"city": S}, ["city"])}},
                  "item": {"$id": "item.json", "$defs": {"line": obj({
                      "sku": S, "qty": {"type": "integer", "minimum": 1}},
                      ["sku", "qty"])}}}},
     [{"items": [{"qty": 1, "sku": "a"}], "customer": {"address": {"city": "X"},
                                                        "name": "n"}}],
     [{"customer": {"name": "n", "address": {}}}, {"customer": {}},
      {"customer": {"name": "n"}, "items": [{"sku": "a", "qty": 0}]}]),
    ("refs", "anchor-refs", {
        "type": "object", "properties": {"primary": {"$ref": "#color"},
                                         "palette": arr({"$ref": "#color"})},
        "$defs": {"c": {"$anchor": "color", "type": "string",
                        "pattern": "^#[0-9a-f]{6}$"}}},
     [{"palette": ["#00ff00"], "primary": "#ffffff"}],
     [{"primary": "red"}, {"palette": ["#FFF"]}, {"palette": "#ffffff"}]),
    ("combinators", "anyof-overlapping-objects", {
        "type": "object", "properties": {"kind": S},
        "anyOf": [obj({"name": S, "size": I}, ["name"]),
                  obj({"name": {"type": "string", "maxLength": 3}, "tags": arr(S)},
                      ["tags"]),
                  obj({"size": {"type": "integer", "minimum": 10}}, ["size"])]},
     [{"size": 12, "kind": "k"}, {"tags": ["a"], "name": "abc"},
      {"size": 1, "name": "x", "tags": []}],
     [{"size": 1}, {"name": 1}, {"tags": "a"}]),
    ("combinators", "allof-narrowing", {
        "allOf": [obj({"id": S, "count": N, "labels": {"type": "object"}}, ["id"]),
                  obj({"count": {"type": "integer", "minimum": 0}, "extra": B}),
                  obj({"id": {"minLength": 3}, "labels": {"additionalProperties": S}})]},
     [{"count": 3, "id": "abc", "labels": {"a": "b"}, "extra": True}],
     [{"id": "ab"}, {"id": "abc", "count": 1.5}, {"id": "abc", "labels": {"a": 1}}]),
    ("combinators", "pattern-and-additional", {
        "type": "object", "properties": {"version": I},
        "patternProperties": {"^x-[a-z]+$": S, "^[0-9]+$": {"type": "object",
                                                              "properties": {"ok": B}}},
        "additionalProperties": False},
     [{"x-note": "n", "version": 1, "200": {"ok": True}}, {"404": {}}],
     [{"other": 1}, {"x-note": 1}, {"x-Note": "s"}]),
    ("combinators", "if-then-shipping", {
        "type": "object", "properties": {
            "country": {"enum": ["US", "CA", "NL"]}, "postal_code": S, "state": S},
        "required": ["country"],
        "allOf": [{"if": {"properties": {"country": {"const": "US"}}},
                   "then": {"properties": {"postal_code": {"pattern": "^[0-9]{5}$"}},
                            "required": ["state"]}},
                  {"if": {"properties": {"country": {"const": "CA"}}},
                   "then": {"properties": {"postal_code": {
                       "pattern": "^[A-Z][0-9][A-Z] [0-9][A-Z][0-9]$"}}}}]},
     [{"state": "NY", "postal_code": "10001", "country": "US"},
      {"country": "CA", "postal_code": "K1A 0B1"}, {"country": "NL"}],
     [{"country": "US", "postal_code": "10001"},
      {"country": "CA", "postal_code": "12345"}, {"country": "DE"}]),
    ("combinators", "k8s-container", obj({
        "apiVersion": {"const": "v1"}, "kind": {"const": "Pod"},
        "metadata": obj({"name": NAME, "labels": {"type": "object",
                                                  "additionalProperties": S},
                         "annotations": {"type": "object", "additionalProperties": S}},
                        ["name"]),
        "spec": obj({"containers": arr(ref("container"), minItems=1),
                     "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]}},
                    ["containers"])}, ["apiVersion", "kind", "metadata", "spec"],
        **{"$defs": {"container": obj({
            "name": NAME, "image": S, "args": arr(S),
            "ports": arr(obj({"containerPort": {"type": "integer", "minimum": 1,
                                                "maximum": 65535},
                              "protocol": {"enum": ["TCP", "UDP"]}}, ["containerPort"])),
            "resources": obj({"limits": {"type": "object", "additionalProperties": {
                "anyOf": [S, N]}}})}, ["name", "image"])}}),
     [{"spec": {"containers": [{"image": "nginx", "name": "web", "ports": [
         {"protocol": "TCP", "containerPort": 80}]}]}, "metadata": {"name": "p"},
       "kind": "Pod", "apiVersion": "v1"}],
     [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
       "spec": {"containers": []}},
      {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "P"},
       "spec": {"containers": [{"name": "a", "image": "i"}]}},
      {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {
          "containers": [{"name": "a", "image": "i", "ports": [{"containerPort": 0}]}]}}]),
    ("combinators", "feature-flags", {
        "type": "object", "additionalProperties": ref("flag"),
        "propertyNames": {"pattern": "^[a-z][a-z0-9_]*$"},
        "$defs": {"flag": {"type": "object", "properties": {
            "enabled": B, "rollout": {"type": "number", "minimum": 0, "maximum": 100},
            "variants": {"type": "object", "additionalProperties": {
                "type": "integer", "minimum": 0}},
            "owner": {"type": "string", "format": "email"}},
            "required": ["enabled"], "additionalProperties": False}}},
     [{"new_ui": {"rollout": 25.5, "enabled": True}, "beta": {"enabled": False,
                                                             "variants": {"a": 1}}}],
     [{"NewUI": {"enabled": True}}, {"x": {"enabled": True, "rollout": 101}},
      {"x": {"rollout": 1}}]),
]
