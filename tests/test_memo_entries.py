"""core.memo: the text of the entries kamailio.cfg replays."""

from __future__ import annotations

import pytest

from cpmiw.core import memo
from cpmiw.core.classify import ServiceHeaders
from cpmiw.core.decision import Action, Decision
from cpmiw.core.services import Service

SESSION_URN = "urn:urn-7:3gpp-service.ims.icsi.oma.cpm.session"
NONE, PARAMS, WHOLE = memo.ContactPart.NONE, memo.ContactPart.PARAMS, memo.ContactPart.WHOLE
REWRITE = Decision(Action.REWRITE, "interworking-rewrite", rewrite_to=Service.IM_PAGER)


def test_labels_are_the_metrics_labels_and_split_back() -> None:
    text = memo.labels("MESSAGE", Service.CPM_MSG, REWRITE)
    assert text == "MESSAGE/cpm.msg/rewrite/interworking-rewrite"
    assert memo.split_labels(text) == ("MESSAGE", "cpm.msg", "rewrite", "interworking-rewrite")
    assert memo.split_labels("MESSAGE/cpm.msg/rewrite") is None
    assert memo.split_labels("a//b/c") is None


def test_an_outcome_codes_each_header_kept_replaced_or_removed() -> None:
    edits = {"Accept-Contact": "*;+g.oma.sip-im", "P-Preferred-Service": None}
    text = memo.outcome("L", edits, "sip:bob@IMS.example.net", "0:im")
    assert text == "L|1020|*;+g.oma.sip-im||||bob@ims.example.net|sip:bob@IMS.example.net|0:im||"
    assert (
        memo.outcome("L", {}, "sip:bob@h", "1:cpm 2:im")
        == "L|0000|||||bob@h|sip:bob@h|1:cpm 2:im||"
    )


def test_an_outcome_carries_what_the_sms_fallback_needs() -> None:
    armed = '["sip:127.0.0.4:5060", "sip:bob@h", "cpm.msg"]'
    text = memo.outcome("L", {}, "sip:bob@h", "s", (armed, 5000))
    assert text is not None and text.split("|")[9:] == [armed, "5000"]
    assert memo.outcome("L", {}, "sip:bob@h", "s", ('["sip:a|b"]', 5000)) is None


def test_values_that_cannot_be_carried_give_no_outcome() -> None:
    assert memo.outcome("L", {"Contact": "<sip:a@b>;x=a|b"}, "sip:bob@h", "0:im") is None
    assert memo.outcome("L", {"Contact": "<sip:a@b>\r\n x"}, "sip:bob@h", "0:im") is None


def test_an_entry_lives_no_longer_than_the_next_contact_expiry() -> None:
    assert memo.lifetime(300.0, None, 1000.0) == 300
    assert memo.lifetime(300.0, 1060.5, 1000.0) == 60
    assert memo.lifetime(300.0, 1000.5, 1000.0) == 0


CONTACT = '<sip:a@h>;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session"'
NAMED = ServiceHeaders("INVITE", preferred_service=SESSION_URN, contact=CONTACT)


def test_an_outcome_holds_whatever_the_contact_when_the_service_was_named_before_it() -> None:
    assert memo.contact_part(NAMED, Service.CPM_SESSION, {}, trusted=True) is NONE
    assert memo.contact_part(ServiceHeaders("MESSAGE"), Service.NONE, {}, trusted=True) is NONE
    # ... unless the Contact alone names the service
    only_contact = ServiceHeaders("INVITE", contact=CONTACT)
    assert memo.contact_part(only_contact, Service.CPM_SESSION, {}, trusted=True) is WHOLE


def test_a_rewritten_contact_counts_by_its_header_parameters_alone() -> None:
    rewritten = {"Contact": "<sip:a@h>;+g.oma.sip-im"}
    assert memo.contact_part(NAMED, Service.CPM_SESSION, rewritten, trusted=True) is PARAMS
    text = memo.outcome("L", rewritten, "sip:bob@h", "0:im", contact=PARAMS)
    assert text == "L|0300||;+g.oma.sip-im|||bob@h|sip:bob@h|0:im||"


@pytest.mark.parametrize(
    "contact",
    [
        '"a>b" <sip:a@h>;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session"',
        CONTACT + ", <sip:b@h>",  # two name-addrs
        CONTACT.replace(">;", "> ;"),  # what follows the name-addr is not its parameters
        CONTACT.replace("<sip:a@h>", "sip:a@h"),  # no name-addr
    ],
)
def test_any_other_rewritten_contact_counts_whole(contact: str) -> None:
    headers = ServiceHeaders("INVITE", preferred_service=SESSION_URN, contact=contact)
    rewritten = {"Contact": contact.replace(CONTACT.partition(">")[2], ";+g.oma.sip-im")}
    assert memo.contact_part(headers, Service.CPM_SESSION, rewritten, trusted=True) is WHOLE
