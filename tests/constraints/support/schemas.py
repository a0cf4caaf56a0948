"""Ten realistic JSON schemas (nested objects, arrays of objects, enums, optional fields,
$ref, formats, bounds), each with valid example instances. Shared by the constraint tests,
the benches and the end-to-end generation tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SchemaCase:
    name: str
    schema: dict[str, Any]
    examples: tuple[Any, ...]


ADDRESS = {
    "type": "object",
    "properties": {
        "street": {"type": "string", "minLength": 1},
        "city": {"type": "string"},
        "postal_code": {"type": "string", "pattern": "^[0-9]{5}$"},
        "country": {"type": "string", "enum": ["US", "FR", "DE", "JP", "BR"]},
    },
    "required": ["street", "city", "country"],
    "additionalProperties": False,
}

SCHEMAS: list[SchemaCase] = [
    SchemaCase(
        "person",
        {
            "title": "Person",
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 80},
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "email": {"type": "string", "format": "email"},
                "is_active": {"type": "boolean"},
            },
            "required": ["name", "age"],
        },
        (
            {"name": "Ada Lovelace", "age": 36, "email": "ada@example.com", "is_active": False},
            {"name": "Linus", "age": 54},
            {"age": 7, "name": "Zoë", "is_active": True},
        ),
    ),
    SchemaCase(
        "order_with_items",
        {
            "type": "object",
            "properties": {
                "order_id": {"type": "string", "format": "uuid"},
                "customer": {"$ref": "#/$defs/customer"},
                "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1},
                "status": {"enum": ["pending", "paid", "shipped", "cancelled"]},
                "notes": {"type": ["string", "null"]},
            },
            "required": ["order_id", "customer", "items", "status"],
            "additionalProperties": False,
            "$defs": {
                "customer": {
                    "type": "object",
                    "properties": {"id": {"type": "integer", "minimum": 1}, "name": {"type": "string"}},
                    "required": ["id", "name"],
                    "additionalProperties": False,
                },
                "item": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                        "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
                        "unit_price": {"type": "number", "exclusiveMinimum": 0},
                    },
                    "required": ["sku", "quantity", "unit_price"],
                    "additionalProperties": False,
                },
            },
        },
        (
            {
                "order_id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
                "customer": {"id": 42, "name": "Grace Hopper"},
                "items": [{"sku": "ABC-1234", "quantity": 2, "unit_price": 9.99}],
                "status": "paid",
            },
            {
                "status": "pending",
                "items": [
                    {"sku": "XYZ-0001", "quantity": 1, "unit_price": 120},
                    {"quantity": 3, "sku": "QQQ-9999", "unit_price": 0.5},
                ],
                "customer": {"name": "Bob", "id": 1},
                "order_id": "00000000-0000-0000-0000-000000000000",
                "notes": None,
            },
        ),
    ),
    SchemaCase(
        "event",
        {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 120},
                "start": {"type": "string", "format": "date-time"},
                "end": {"type": "string", "format": "date-time"},
                "location": ADDRESS,
                "attendees": {"type": "array", "items": {"type": "string", "format": "email"}, "maxItems": 20},
                "all_day": {"type": "boolean"},
            },
            "required": ["title", "start"],
            "additionalProperties": False,
        },
        (
            {"title": "Standup", "start": "2024-05-01T09:00:00Z", "end": "2024-05-01T09:15:00Z"},
            {
                "title": "Conference",
                "start": "2024-10-10T08:30:00+02:00",
                "location": {"street": "1 Rue de Rivoli", "city": "Paris", "country": "FR", "postal_code": "75001"},
                "attendees": ["a@b.co", "team@example.org"],
                "all_day": True,
            },
        ),
    ),
    SchemaCase(
        "tree",
        {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "size": {"type": "integer", "minimum": 0},
                        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                    },
                    "required": ["name"],
                    "additionalProperties": False,
                }
            },
            "$ref": "#/$defs/node",
        },
        (
            {"name": "root", "children": [{"name": "a", "size": 10}, {"name": "b", "children": []}]},
            {"name": "leaf", "size": 0},
            {"name": "/", "children": [{"name": "usr", "children": [{"name": "bin", "size": 4096}]}]},
        ),
    ),
    SchemaCase(
        "tool_call",
        {
            "type": "object",
            "properties": {
                "tool": {"enum": ["search", "calculator", "weather"]},
                "arguments": {
                    "anyOf": [
                        {
                            "type": "object",
                            "properties": {
                                "query": {"type": "string"},
                                "top_k": {"type": "integer", "minimum": 1, "maximum": 50},
                            },
                            "required": ["query"],
                            "additionalProperties": False,
                        },
                        {
                            "type": "object",
                            "properties": {"expression": {"type": "string"}},
                            "required": ["expression"],
                            "additionalProperties": False,
                        },
                        {
                            "type": "object",
                            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                            "required": ["city"],
                            "additionalProperties": False,
                        },
                    ]
                },
            },
            "required": ["tool", "arguments"],
            "additionalProperties": False,
        },
        (
            {"tool": "search", "arguments": {"query": "triton kernels", "top_k": 5}},
            {"tool": "calculator", "arguments": {"expression": "2 * (3 + 4)"}},
            {"tool": "weather", "arguments": {"city": "Tokyo", "unit": "celsius"}},
        ),
    ),
    SchemaCase(
        "product_catalog",
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "name": {"type": "string"},
                    "price": {"type": "number", "minimum": 0},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "dimensions": {
                        "type": "object",
                        "properties": {"w": {"type": "number"}, "h": {"type": "number"}, "d": {"type": "number"}},
                        "required": ["w", "h"],
                    },
                    "in_stock": {"type": "boolean"},
                },
                "required": ["id", "name", "price"],
            },
            "maxItems": 10,
        },
        (
            [{"id": 1, "name": "Chair", "price": 49.5, "tags": ["furniture"], "in_stock": True}],
            [
                {"id": 2, "name": "Desk", "price": 199, "dimensions": {"w": 120, "h": 75.5}},
                {"id": 3, "name": "Lamp", "price": 0},
            ],
            [],
        ),
    ),
    SchemaCase(
        "sentiment",
        {
            "type": "object",
            "properties": {
                "sentiment": {"enum": ["positive", "negative", "neutral"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "keywords": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 5},
            },
            "required": ["sentiment", "confidence"],
            "additionalProperties": False,
        },
        (
            {"sentiment": "positive", "confidence": 0.93, "keywords": ["great", "fast"]},
            {"confidence": 0.5, "sentiment": "neutral"},
        ),
    ),
    SchemaCase(
        "server_config",
        {
            "type": "object",
            "properties": {
                "host": {"type": "string", "format": "ipv4"},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "tls": {"type": "boolean"},
                "log_level": {"enum": ["debug", "info", "warning", "error"]},
                "endpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "path": {"type": "string", "pattern": "^/"},
                            "methods": {
                                "type": "array",
                                "items": {"enum": ["GET", "POST", "PUT", "DELETE"]},
                                "minItems": 1,
                            },
                        },
                        "required": ["path", "methods"],
                        "additionalProperties": False,
                    },
                },
                "upstream": {"type": "string", "format": "uri"},
            },
            "required": ["host", "port"],
            "additionalProperties": False,
        },
        (
            {"host": "10.0.0.1", "port": 8080, "tls": False, "log_level": "info"},
            {
                "host": "192.168.1.20",
                "port": 443,
                "tls": True,
                "endpoints": [
                    {"path": "/v1/chat", "methods": ["POST"]},
                    {"path": "/health", "methods": ["GET", "PUT"]},
                ],
                "upstream": "https://api.example.com/v2",
            },
        ),
    ),
    SchemaCase(
        "recipe",
        {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "servings": {"type": "integer", "minimum": 1, "maximum": 20},
                "ingredients": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "item": {"type": "string"},
                            "amount": {"type": "number", "exclusiveMinimum": 0},
                            "unit": {"enum": ["g", "kg", "ml", "l", "cup", "tbsp", "tsp", "piece"]},
                        },
                        "required": ["item", "amount", "unit"],
                        "additionalProperties": False,
                    },
                    "minItems": 1,
                },
                "steps": {"type": "array", "items": {"type": "string", "minLength": 3}, "minItems": 1},
                "vegetarian": {"type": "boolean"},
                "prep_time": {"type": "string", "pattern": "^[0-9]+ (min|h)$"},
            },
            "required": ["name", "ingredients", "steps"],
            "additionalProperties": False,
        },
        (
            {
                "name": "Pancakes",
                "servings": 4,
                "ingredients": [
                    {"item": "flour", "amount": 200, "unit": "g"},
                    {"item": "milk", "amount": 0.3, "unit": "l"},
                ],
                "steps": ["Mix everything.", "Fry in a pan."],
                "vegetarian": True,
                "prep_time": "20 min",
            },
            {
                "name": "Tea",
                "ingredients": [{"item": "tea leaves", "amount": 1, "unit": "tsp"}],
                "steps": ["Steep for 3 minutes."],
            },
        ),
    ),
    SchemaCase(
        "invoice",
        {
            "type": "object",
            "properties": {
                "invoice_number": {"type": "string", "pattern": "^INV-[0-9]{6}$"},
                "date": {"type": "string", "format": "date"},
                "bill_to": {"$ref": "#/definitions/party"},
                "ship_to": {"$ref": "#/definitions/party"},
                "lines": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "description": {"type": "string"},
                            "qty": {"type": "integer", "minimum": 1},
                            "price": {"type": "number", "minimum": 0},
                        },
                        "required": ["description", "qty", "price"],
                    },
                },
                "currency": {"const": "EUR"},
                "paid": {"type": "boolean"},
            },
            "required": ["invoice_number", "date", "bill_to", "lines"],
            "definitions": {
                "party": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "address": ADDRESS, "vat_id": {"type": "string"}},
                    "required": ["name"],
                }
            },
        },
        (
            {
                "invoice_number": "INV-000123",
                "date": "2024-02-28",
                "bill_to": {"name": "ACME"},
                "lines": [{"description": "Consulting", "qty": 10, "price": 150.0}],
                "currency": "EUR",
            },
            {
                "invoice_number": "INV-999999",
                "date": "2023-12-31",
                "bill_to": {"name": "Initech", "address": {"street": "1 Main St", "city": "Austin", "country": "US"}},
                "ship_to": {"name": "Initech Warehouse", "vat_id": "US123"},
                "lines": [],
                "paid": True,
            },
        ),
    ),
]
