"""cpmiw.profile: the stored terminating service profile, strictly decoded."""

from __future__ import annotations

import json
import re

import msgspec
import pytest

from cpmiw.core.profile import (
    MAX_BYTES,
    MAX_IDENTITIES,
    AsFailure,
    Interworking,
    Profile,
    ProfileError,
    decode,
    encode,
    json_schema,
)
from cpmiw.core.services import Family

MINIMAL: dict[str, object] = {
    "identities": ["sip:bob@ims.example.net", "tel:+15551230002"],
    "services": ["im"],
}


def test_round_trip() -> None:
    profile = Profile(
        identities=["sip:carol@ims.example.net", "tel:+15551230003"],
        services=[Family.CPM, Family.SMS],
        barred=True,
        im_as="sip:im-as.example.net;lr",
        ip_sm_gw="sips:ip-sm-gw.example.net:5061",
        interworking=Interworking.IM_AS,
        as_failure=AsFailure.TERMINATE,
    )
    raw = encode(profile)
    assert decode(raw) == profile
    assert decode(raw.decode()) == profile
    assert json.loads(raw)["interworking"] == "im_as"


def test_defaults() -> None:
    profile = decode(json.dumps(MINIMAL))
    assert profile == Profile(
        format=1,
        identities=["sip:bob@ims.example.net", "tel:+15551230002"],
        services=[Family.IM],
        barred=False,
        im_as=None,
        ip_sm_gw=None,
        interworking=Interworking.REWRITE,
        as_failure=AsFailure.CONTINUE,
    )
    assert profile.has(Family.IM)
    assert not profile.has(Family.CPM)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"colour": "blue"}, "colour", id="unknown-field"),
        pytest.param({"barred": "yes"}, "$.barred", id="wrong-type-bool"),
        pytest.param({"services": "im"}, "$.services", id="wrong-type-list"),
        pytest.param({"format": "1"}, "$.format", id="wrong-type-format"),
        pytest.param({"identities": ["sip:bob@ims.example.net", 7]}, "$.identities[1]",
                     id="wrong-type-identity"),
        pytest.param({"services": ["im", "mms"]}, "$.services[1]", id="unknown-service"),
        pytest.param({"interworking": "magic"}, "$.interworking", id="unknown-interworking"),
        pytest.param({"as_failure": "retry"}, "$.as_failure", id="unknown-as-failure"),
        pytest.param({"identities": ["sip:bob@ims.example.net", "mailto:bob@example.net"]},
                     "identities", id="bad-identity-scheme"),
        pytest.param({"identities": ["sip:bob@ims.example.net", "tel:abcde"]},
                     "identities", id="bad-identity-tel"),
        pytest.param({"identities": ["sip:ims.example.net"]}, "identities", id="identity-no-user"),
        pytest.param({"identities": []}, "$.identities", id="no-identity"),
        pytest.param({"identities": ["tel:+15551230002"]}, "identities", id="no-sip-identity"),
        pytest.param({"im_as": "tel:+15551230009"}, "im_as", id="im-as-not-sip"),
        pytest.param({"im_as": "http://im-as.example.net"}, "im_as", id="im-as-http"),
        pytest.param({"ip_sm_gw": "mailto:gw@example.net"}, "ip_sm_gw", id="ip-sm-gw-not-sip"),
        pytest.param({"format": 2}, "format", id="wrong-format-version"),
        pytest.param({"format": 0}, "format", id="format-zero"),
        pytest.param({"services": ["im", "sms", "cpm", "im"]}, "$.services",
                     id="services-too-many"),
        pytest.param({"services": ["im", "im"]}, "services", id="service-twice"),
        pytest.param({"identities": [f"sip:u{n}@ims.example.net" for n in range(33)]},
                     "$.identities", id="identities-too-many"),
        pytest.param({"identities": ["sip:" + "b" * 250 + "@ims.example.net"]},
                     "$.identities[0]", id="identity-too-long"),
        pytest.param({"im_as": "sip:" + "a" * 300}, "$.im_as", id="im-as-too-long"),
    ],
)  # fmt: skip
def test_invalid_profile_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ProfileError, match=re.escape(field)):
        decode(json.dumps({**MINIMAL, **changes}))


@pytest.mark.parametrize("key", ["identities", "services"])
def test_missing_required_field(key: str) -> None:
    with pytest.raises(ProfileError, match=key):
        decode(json.dumps({k: v for k, v in MINIMAL.items() if k != key}))


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"not json", b'{"identities": [}', b"\xff\xfe", "{'identities': []}"],
)
def test_not_json(raw: bytes | str) -> None:
    with pytest.raises(ProfileError, match="not JSON"):
        decode(raw)


def test_a_stored_profile_too_long_is_refused_before_it_is_parsed() -> None:
    padded = json.dumps(MINIMAL).replace("{", "{" + " " * (MAX_BYTES), 1)
    with pytest.raises(ProfileError, match="more than a profile may take"):
        decode(padded)
    largest = {
        **MINIMAL,
        "identities": [f"sip:{n:02d}{'u' * 230}@ims.example.net" for n in range(MAX_IDENTITIES)],
        "services": ["cpm", "im", "sms"],
        "im_as": "sip:" + "a" * 250,
        "ip_sm_gw": "sip:" + "g" * 250,
        "interworking": "im_as",
        "as_failure": "terminate",
        "barred": True,
    }
    assert len(encode(decode(json.dumps(largest)))) < MAX_BYTES  # the bound refuses no valid one


@pytest.mark.parametrize("raw", ["[]", "null", '"sip:bob@ims.example.net"', "42"])
def test_json_but_not_an_object(raw: str) -> None:
    with pytest.raises(ProfileError, match="object"):
        decode(raw)


def test_identity_properties() -> None:
    profile = decode(
        json.dumps(
            {
                "identities": [
                    "tel:+1-555-123-0001",
                    "SIP:Alice@IMS.Example.NET:5060",
                    "sip:+15551230001@ims.example.net;user=phone",
                    "sip:alice.work@ims.example.net",
                ],
                "services": ["cpm"],
            }
        )
    )
    assert profile.subscriber == "tel:+15551230001"
    assert profile.aliases == {
        "tel:+15551230001",
        "sip:Alice@ims.example.net",
        "sip:alice.work@ims.example.net",
    }
    assert profile.registration_aor == "SIP:Alice@IMS.Example.NET:5060"


def test_json_schema_names_the_fields() -> None:
    schema = json_schema()
    assert isinstance(schema, dict)
    text = json.dumps(schema)  # serialisable as is
    for field in msgspec.structs.fields(Profile):
        assert f'"{field.name}"' in text
    definition = json.loads(text)["$defs"]["Profile"]
    assert set(definition["properties"]) == {f.name for f in msgspec.structs.fields(Profile)}
    assert set(definition["required"]) == {"identities", "services"}
