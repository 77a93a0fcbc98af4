"""Referral rules: district-written rule-engine expressions over the indicators.

Each rule is parsed by rule-engine (the district's language, validated at start) and translated
to a SQL predicate so it runs set-based over `student_indicators`. A rule using a construct the
translator does not know falls back to rule-engine itself, row by row, so it still works.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import rule_engine
import rule_engine.ast as ast
from sqlalchemy import Connection, text

from service.config import RuleConfig
from service.indicator_names import INDICATORS, rule_context

_COMPARE = {"eq": "=", "ne": "<>", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_ARITH = {"add": "+", "sub": "-", "mul": "*", "tdiv": "/"}


class Untranslatable(Exception):
    """The expression uses something we do not turn into SQL."""


@dataclass(frozen=True)
class CompiledRule:
    config: RuleConfig
    engine_rule: rule_engine.Rule
    sql: str | None  # None: evaluate with rule-engine in Python

    def matches(self, values: dict[str, Any]) -> bool:
        try:
            return bool(self.engine_rule.matches(values))
        except rule_engine.EngineError:
            return False


def _sql(node: Any) -> str:
    if isinstance(node, ast.LogicExpression):
        op = {"and": "AND", "or": "OR"}[node.type]
        return f"({_sql(node.left)} {op} {_sql(node.right)})"
    if isinstance(node, ast.UnaryExpression) and node.type == "not":
        return f"(NOT {_sql(node.right)})"
    if isinstance(node, ast.UnaryExpression) and node.type == "uminus":
        return f"(-{_sql(node.right)})"
    if isinstance(node, ast.ComparisonExpression | ast.ArithmeticComparisonExpression):
        if node.type not in _COMPARE:
            raise Untranslatable(node.type)
        return f"({_sql(node.left)} {_COMPARE[node.type]} {_sql(node.right)})"
    if isinstance(node, ast.ArithmeticExpression | ast.AddExpression | ast.SubtractExpression):
        if node.type not in _ARITH:
            raise Untranslatable(node.type)
        left, right = _sql(node.left), _sql(node.right)
        if node.type == "tdiv":  # rule-engine divides as floats; SQL must not do integer division
            return f"(CAST({left} AS DOUBLE PRECISION) / NULLIF({right}, 0))"
        return f"({left} {_ARITH[node.type]} {right})"
    if isinstance(node, ast.SymbolExpression):
        if node.name not in INDICATORS or node.scope is not None:
            raise Untranslatable(node.name)
        return f"si.{node.name}"
    if isinstance(node, ast.FloatExpression):
        value = node.value
        if isinstance(value, Decimal) and value == value.to_integral_value():
            return str(int(value))
        return repr(float(value))
    if isinstance(node, ast.BooleanExpression):
        return "TRUE" if node.value else "FALSE"
    raise Untranslatable(type(node).__name__)


def to_sql(expression: str) -> str | None:
    """A SQL predicate equal to the rule, or None if the rule must run in Python."""
    rule = rule_engine.Rule(expression, context=rule_context())
    try:
        return _sql(rule.statement.expression)
    except Untranslatable:
        return None


def compile_rules(rules: list[RuleConfig]) -> list[CompiledRule]:
    return [
        CompiledRule(r, rule_engine.Rule(r.when, context=rule_context()), to_sql(r.when))
        for r in rules
    ]


def _names_in(expression: str) -> set[str]:
    return {name for name in INDICATORS if re.search(rf"\b{name}\b", expression)}


def unknown_counts(conn: Connection, rules: list[CompiledRule]) -> Counter[str]:
    """Per rule, the students it could not judge because an indicator it reads is unknown
    (NULL): such a rule neither fires nor passes for them, and the summary says how many."""
    out: Counter[str] = Counter()
    sql_rules = [(i, r) for i, r in enumerate(rules) if r.sql]
    if sql_rules:
        sums = ", ".join(
            f"SUM(CASE WHEN ({r.sql}) IS NULL THEN 1 ELSE 0 END) AS u{i}" for i, r in sql_rules
        )
        row = conn.execute(text(f"SELECT {sums} FROM student_indicators si")).mappings().one()
        for i, r in sql_rules:
            if row[f"u{i}"]:
                out[r.config.id] = int(row[f"u{i}"])
    py_rules = [(r, sorted(_names_in(r.config.when))) for r in rules if not r.sql]
    if py_rules:
        cols = ", ".join(f"si.{c}" for c in INDICATORS)
        for values in conn.execute(text(f"SELECT {cols} FROM student_indicators si")).mappings():
            for r, names in py_rules:
                if any(values[n] is None for n in names) and not r.matches(dict(values)):
                    out[r.config.id] += 1
    return out
