"""core.memo: the text of the entries kamailio.cfg replays."""

from __future__ import annotations

from cpmiw.core import memo
from cpmiw.core.classify import ServiceHeaders
from cpmiw.core.decision import Action, Decision
from cpmiw.core.services import Service

SESSION_URN = "urn:urn-7:3gpp-service.ims.icsi.oma.cpm.session"
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


def test_an_outcome_holds_whatever_the_contact_when_the_service_was_named_before_it() -> None:
    contact = '<sip:a@h>;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session"'
    named = ServiceHeaders("INVITE", preferred_service=SESSION_URN, contact=contact)
    assert memo.contact_free(named, Service.CPM_SESSION, {}, trusted=True)
    # ... unless the Contact is rewritten (an IM recipient), or it alone names the service
    rewritten = {"Contact": "<sip:a@h>;+g.oma.sip-im"}
    assert not memo.contact_free(named, Service.CPM_SESSION, rewritten, trusted=True)
    only_contact = ServiceHeaders("INVITE", contact=contact)
    assert not memo.contact_free(only_contact, Service.CPM_SESSION, {}, trusted=True)
    assert memo.contact_free(ServiceHeaders("MESSAGE"), Service.NONE, {}, trusted=True)
