"""Family message text, rendered when the message is sent, in Jinja2's sandbox.

Templates are district-written configuration: the sandbox keeps them from reaching Python
internals, and `StrictUndefined` turns a misspelled placeholder into an error. Every template is
rendered for every configured language with a complete sample context when the configuration
loads, so a typo fails `casebridge check-config` (file, key, language), never a nightly send.

FERPA: the context holds the school, the district, the student's first name and the resources.
It has no reason, no indicator and no grade, so no template can leak one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from service.config import ResourceConfig, Settings, TemplateConfig
from service.errors import ConfigProblem, PermanentError

_ENV = SandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
)

SAMPLE_RESOURCES = [
    ResourceConfig(
        id="sample", category="basic-needs", name="Sample Food Pantry", phone="+15550100100",
        url="https://example.org", description={"en": "free groceries"},
    )
]  # fmt: skip


@dataclass(frozen=True)
class RenderedMessage:
    language: str
    body: str
    subject: str | None  # email only


@lru_cache(maxsize=256)
def _compile(source: str) -> Any:
    return _ENV.from_string(source)


def _pick(texts: dict[str, str], language: str) -> tuple[str, str]:
    if language in texts:
        return language, texts[language]
    return "en", texts.get("en") or next(iter(texts.values()), "")


def resource_context(
    resources: list[ResourceConfig], language: str, medium: str
) -> tuple[list[dict[str, str]], str]:
    """Each resource for templates, and the default one-line-each text of them."""
    items: list[dict[str, str]] = []
    lines: list[str] = []
    for r in resources:
        desc = r.description.get(language) or r.description.get("en") or ""
        items.append({"name": r.name, "description": desc, "phone": r.phone, "url": r.url})
        parts = [r.name] + [p for p in (desc, r.phone) if p]
        if r.url and medium == "email":
            parts.append(r.url)
        lines.append(" - ".join(parts))
    return items, ("\n" if medium == "email" else "; ").join(lines)


def render_family_notice(
    templates: TemplateConfig,
    district: str,
    language: str,
    medium: str,
    resources: list[ResourceConfig],
    student_first_name: str,
    school_name: str,
) -> RenderedMessage:
    """The message in the family's language (English when the district wrote none)."""
    lang, source = _pick(templates.family_notice, language)
    items, text = resource_context(resources, lang, medium)
    context = {
        "district": district,
        "school": school_name,
        "student_first_name": student_first_name,
        "resources": items,
        "resources_text": text,
        "medium": medium,
        "language": lang,
    }
    try:
        body = _compile(source).render(context).strip()
        subject = None
        if medium == "email":
            _, subject_source = _pick(templates.family_notice_subject, lang)
            subject = _compile(subject_source).render(context).strip()
    except TemplateError as exc:  # check-config renders every template; this is a last guard
        raise PermanentError(f"template family_notice.{lang}: {exc}") from exc
    return RenderedMessage(lang, body, subject)


def check_templates(settings: Settings) -> list[ConfigProblem]:
    """Render every template in every language, both media, with a complete sample context."""
    templates = settings.templates
    if templates is None:
        return []
    problems: list[ConfigProblem] = []
    for key in ("family_notice", "family_notice_subject", "follow_up"):
        texts: dict[str, str] = getattr(templates, key)
        for language, source in texts.items():
            where = f"templates.{key}.{language}"
            try:
                template = _ENV.from_string(source)
                for medium in ("sms", "email"):
                    items, text = resource_context(SAMPLE_RESOURCES, language, medium)
                    template.render(
                        district=settings.district.name, school="Sample School",
                        student_first_name="Sam", resources=items, resources_text=text,
                        medium=medium, language=language,
                    )  # fmt: skip
            except UndefinedError as exc:
                problems.append(
                    ConfigProblem(settings.source_file, where, f"unknown placeholder: {exc}")
                )
            except TemplateError as exc:
                line = getattr(exc, "lineno", None)
                at = f" (line {line})" if line else ""
                problems.append(
                    ConfigProblem(settings.source_file, where, f"template error{at}: {exc}")
                )
    return problems


# Kept within GSM-7: an accent here would turn the whole text into UCS-2.
MORE_LABEL = {"en": "More resources", "es": "Otros recursos"}


def fit_family_notice(
    templates: TemplateConfig,
    district: str,
    language: str,
    medium: str,
    resources: list[ResourceConfig],
    student_first_name: str,
    school_name: str,
    max_segments: int,
    more_link: str | None = None,
) -> tuple[RenderedMessage, list[ResourceConfig]]:
    """Render with as many resources as fit in `max_segments` SMS segments (at least one).

    For each count, first with the resources' descriptions, then with name and phone only (an
    accented description alone turns a text into UCS-2). With `more_link`, a text that leaves
    anything out ends with a link to the page that has it all. Email is not cut. The resources
    left out are not counted as sent, so a later message can still offer them.
    """
    from service.sms_text import sms_size

    def render(chosen: list[ResourceConfig], partial: bool = False) -> RenderedMessage:
        rendered = render_family_notice(
            templates, district, language, medium, chosen, student_first_name, school_name
        )
        if more_link and (partial or len(chosen) < len(resources)):  # the rest, one tap away
            label = MORE_LABEL.get(rendered.language, MORE_LABEL["en"])
            body = f"{rendered.body}\n{label}: {more_link}"
            return RenderedMessage(rendered.language, body, rendered.subject)
        return rendered

    if medium != "sms" or not resources:
        return render(resources), resources
    fallback: tuple[RenderedMessage, list[ResourceConfig]] | None = None
    for count in range(len(resources), 0, -1):
        chosen = resources[:count]
        for described in (True, False):
            if described:
                variant, partial = chosen, False
            else:  # built only when the described text did not fit
                variant = [r.model_copy(update={"description": {}}) for r in chosen]
                partial = any(r.description for r in chosen)
            rendered = render(variant, partial)
            if sms_size(rendered.body).segments <= max_segments:
                return rendered, chosen
            if count == 1:
                fallback = (rendered, chosen)  # the shortest we can make: sent anyway
    assert fallback is not None
    return fallback


def template_warnings(settings: Settings) -> list[ConfigProblem]:
    """Translations that cost far more SMS segments than English (UCS-2 triples the count).

    Not errors: the message still goes out, with fewer resources per text.
    """
    from service.sms_text import sms_size

    templates = settings.templates
    if templates is None:
        return []
    limit = settings.policy.sms_max_segments
    sizes = {}
    for language in templates.family_notice:
        rendered = render_family_notice(
            templates, settings.district.name, language, "sms", SAMPLE_RESOURCES,
            "Sam", "Sample School",
        )  # fmt: skip
        sizes[language] = sms_size(rendered.body)
    english = sizes.get("en")
    warnings: list[ConfigProblem] = []
    for language, size in sizes.items():
        where = f"templates.family_notice.{language}"
        if english and language != "en" and size.segments >= 3 * max(english.segments, 1):
            warnings.append(ConfigProblem(
                settings.source_file, where,
                f"{size.segments} SMS segments ({size.encoding}) where English takes "
                f"{english.segments} ({english.encoding}): shorten it or avoid characters "
                "outside GSM-7",
            ))  # fmt: skip
        elif size.segments > limit:
            warnings.append(ConfigProblem(
                settings.source_file, where,
                f"{size.segments} SMS segments ({size.encoding}) with one resource, above "
                f"policy.sms_max_segments ({limit})",
            ))  # fmt: skip
    return warnings


def render_follow_up(
    templates: TemplateConfig, district: str, language: str, school_name: str
) -> RenderedMessage:
    """The follow-up question in the family's language (English when none was written)."""
    lang, source = _pick(templates.follow_up, language)
    context = {
        "district": district, "school": school_name, "student_first_name": "",
        "resources": [], "resources_text": "", "medium": "sms", "language": lang,
    }  # fmt: skip
    try:
        return RenderedMessage(lang, _compile(source).render(context).strip(), None)
    except TemplateError as exc:
        raise PermanentError(f"template follow_up.{lang}: {exc}") from exc
