"""The embedded simulator's `GetPlatformConfig`: each account as the platform knows it, its own default template
included (a sender from configuration keeps the one it was configured with, or none)."""

from __future__ import annotations

from conftest import BUSINESS
from wacall_client.sim.v1 import simulator_pb2 as sim_pb

from wacall.upstreams.base import TemplateRef
from wacall.upstreams.meta.accounts import MetaAccount

OTHER_BUSINESS = "+447911123457"
THIRD_BUSINESS = "+447911123458"


def configured(number: str, template: TemplateRef | None):  # type: ignore[no-untyped-def]
    meta = MetaAccount(number, "1" + number[1:], "2" + number[1:], "configured-token", "configured")
    return meta.account(default_template=template)


async def test_each_account_reports_its_own_default_template(make_service) -> None:  # type: ignore[no-untyped-def]
    running = await make_service(
        senders=(configured(BUSINESS, TemplateRef("callback", "es")), configured(OTHER_BUSINESS, None))
    )
    await running.sim.ProvisionBusiness(sim_pb.ProvisionBusinessRequest(business_number=THIRD_BUSINESS))
    config = await running.sim.GetPlatformConfig(sim_pb.GetPlatformConfigRequest())
    defaults = {a.business_number: (a.default_template_name, a.default_template_language) for a in config.accounts}
    assert defaults == {
        BUSINESS: ("callback", "es"),  # configured with its own
        OTHER_BUSINESS: ("", ""),  # configured with none
        THIRD_BUSINESS: ("call_permission_request", "en"),  # provisioned by the platform
    }
