"""Which messaging service a request asks for, read from its headers.

Sources, most authoritative first: an SMS-over-IP body; the ICSI in P-Asserted-Service, then
P-Preferred-Service, then Accept-Contact, then Contact; then the OMA SIMPLE IM feature tags in
Accept-Contact and Contact; then the SMS-over-IP feature tag. The first source that names a
service valid for the method wins. Only initial MESSAGE and INVITE requests carry messaging.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote

from .services import (
    CPM_BY_ICSI,
    ICSI_FEATURE,
    ICSI_PREFIX,
    IM_LARGE_TAG,
    IM_TAG,
    SMS_CONTENT_TYPE,
    SMSIP_TAG,
    Family,
    Service,
)


@dataclass(frozen=True)
class ServiceHeaders:
    """The header values that identify a service; several header lines joined by commas."""

    method: str
    accept_contact: str = ""
    contact: str = ""
    preferred_service: str = ""
    asserted_service: str = ""
    content_type: str = ""


# Services each method can carry, most specific first: when one header names several (a
# Contact advertising chat and file transfer), the most specific one is the request's.
_BY_METHOD: dict[str, tuple[Service, ...]] = {
    "MESSAGE": (
        Service.SMS,
        Service.CPM_SYSTEMMSG,
        Service.CPM_DEFERRED,
        Service.CPM_MSG,
        Service.IM_PAGER,
    ),
    "INVITE": (
        Service.CPM_GROUP,
        Service.CPM_FILETRANSFER,
        Service.CPM_LARGEMSG,
        Service.CPM_DEFERRED,
        Service.CPM_SESSION,
        Service.IM_LARGEMSG,
        Service.IM_SESSION,
    ),
}
_IM_BY_TAG_AND_METHOD: dict[tuple[str, str], Service] = {
    (IM_LARGE_TAG, "INVITE"): Service.IM_LARGEMSG,
    (IM_TAG, "INVITE"): Service.IM_SESSION,
    (IM_TAG, "MESSAGE"): Service.IM_PAGER,
}


def classify(headers: ServiceHeaders, *, trusted: bool = True) -> Service:
    """The service the request asks for; Service.NONE when it is not messaging.

    P-Asserted-Service counts only when the sender is `trusted` to assert services.
    """
    return _classify(
        headers.method,
        headers.accept_contact,
        headers.contact,
        headers.preferred_service,
        headers.asserted_service if trusted else "",
        headers.content_type,
    )


# Remembered per process: clients of one kind send the same few header combinations, so a hit
# (a dictionary look-up) replaces a dozen regular-expression scans for most requests.
@functools.lru_cache(maxsize=4096)
def _classify(
    method: str,
    accept_contact: str,
    contact: str,
    preferred_service: str,
    asserted_service: str,
    content_type: str,
) -> Service:
    method = method.upper()
    allowed = _BY_METHOD.get(method)
    if allowed is None:
        return Service.NONE
    if method == "MESSAGE" and _media_type(content_type) == SMS_CONTENT_TYPE:
        return Service.SMS
    for found in _sources(accept_contact, contact, preferred_service, asserted_service, method):
        for service in allowed:
            if service in found:
                return service
    return Service.NONE


def _sources(
    accept_contact: str, contact: str, preferred_service: str, asserted_service: str, method: str
) -> Iterator[set[Service]]:
    """What each source names, most authoritative first; lazily, as the first match ends it."""
    yield _cpm_in(asserted_service.lower())
    yield _cpm_in(preferred_service.lower())
    yield _cpm_in_feature_header(accept_contact)
    yield _cpm_in_feature_header(contact)
    yield _im_in_feature_header(accept_contact, method)
    yield _im_in_feature_header(contact, method)
    yield {Service.SMS} if SMSIP_TAG in _tags(accept_contact) else set()


# `;+feature[=value]`: the feature tags of RFC 3840 all start with "+"; a quoted value may hold
# commas. Found with one regular expression: this runs for every request.
_FEATURE_PARAM = re.compile(r';\s*(\+[A-Za-z0-9.!%*_`\'~\-]+)\s*(?:=\s*("[^"]*"|[^;,\s]*))?')
_ICSI = re.compile(re.escape(ICSI_PREFIX) + r"([a-z0-9.\-]+)")
# A name-addr's display name and <URI>: their parameters are not the header's feature tags.
_NAME_ADDR = re.compile(r'(?:"(?:[^"\\]|\\.)*"\s*)?<[^>]*>')


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _cpm_in(lower_text: str) -> set[Service]:
    """The CPM services whose plain ICSI URN appears in the (lower-cased) text."""
    if ICSI_PREFIX not in lower_text:
        return set()
    return {s for suffix in _ICSI.findall(lower_text) if (s := CPM_BY_ICSI.get(suffix))}


def _feature_params(value: str) -> list[tuple[str, str]]:
    """(lower-cased name, value as written) of every feature tag parameter in the header."""
    if "+" not in value:
        return []
    if "<" in value:
        value = _NAME_ADDR.sub("", value)
    return [(m.group(1).lower(), m.group(2) or "") for m in _FEATURE_PARAM.finditer(value)]


def _cpm_in_feature_header(value: str) -> set[Service]:
    icsi_values = [v for name, v in _feature_params(value) if name == ICSI_FEATURE]
    return _cpm_in(unquote(" ".join(icsi_values)).lower()) if icsi_values else set()


def _tags(value: str) -> set[str]:
    return {name for name, _ in _feature_params(value)}


def _im_in_feature_header(value: str, method: str) -> set[Service]:
    tags = _tags(value)
    return {
        service
        for (tag, m), service in _IM_BY_TAG_AND_METHOD.items()
        if m == method and tag in tags
    }


def device_families(contact: str) -> frozenset[Family]:
    """What a registering device can take, from the feature tags of its Contact entry."""
    tags = _tags(contact)
    found = {Family.CPM} if _cpm_in_feature_header(contact) else set()
    if tags & {IM_TAG, IM_LARGE_TAG}:
        found.add(Family.IM)
    if SMSIP_TAG in tags:
        found.add(Family.SMS)
    return frozenset(found)
