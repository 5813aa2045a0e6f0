"""OpenStack Nova's instance metadata in a domain's XML read into an OpenStackInstance: pure,
so the adapter and the tests share it without libvirt.

Nova (nova/virt/libvirt/config.py, LibvirtConfigGuestMetaNova*) writes under the domain's
<metadata> one <nova:instance> in its namespace: <nova:name> (the instance's display name),
<nova:flavor name=...>, and <nova:owner> with <nova:user uuid=...> and <nova:project
uuid=...>, their names as text (the owner's parts only where Nova knew both id and name).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ...model.observations import OpenStackInstance

NOVA_NAMESPACE = "http://openstack.org/xmlns/libvirt/nova/1.1"
_NOVA = f"{{{NOVA_NAMESPACE}}}"


class MalformedNovaMetadata(ValueError):
    """<nova:instance> is there but not in the shape Nova writes; the message says where."""


def parse_nova_instance(xml: str) -> OpenStackInstance | None:
    """The instance of a domain XML; None when it has no Nova metadata (not an OpenStack
    domain). MalformedNovaMetadata when the metadata is there but unusable: no name, an
    element twice, elements where Nova writes text, a user or project without its id."""
    found = ET.fromstring(xml).findall(f"metadata/{_NOVA}instance")
    if not found:
        return None
    if len(found) > 1:
        raise MalformedNovaMetadata(f"{len(found)} <nova:instance> elements")
    instance = found[0]
    name = _text(instance, "name")
    if not name:
        raise MalformedNovaMetadata("no <nova:name>")
    flavor = _one(instance, "flavor")
    owner = _one(instance, "owner")
    user = _one(owner, "user") if owner is not None else None
    project = _one(owner, "project") if owner is not None else None
    return OpenStackInstance(
        name=name,
        flavor_name=flavor.get("name", "") if flavor is not None else "",
        project_name=_text(owner, "project") if owner is not None else "",
        project_id=_id(project, "project"),
        user_name=_text(owner, "user") if owner is not None else "",
        user_id=_id(user, "user"),
    )


def _one(parent: ET.Element, tag: str) -> ET.Element | None:
    found = parent.findall(_NOVA + tag)
    if len(found) > 1:
        raise MalformedNovaMetadata(f"{len(found)} <nova:{tag}> elements")
    return found[0] if found else None


def _text(parent: ET.Element, tag: str) -> str:
    """The element's text, stripped; '' without the element."""
    element = _one(parent, tag)
    if element is None:
        return ""
    if len(element):
        raise MalformedNovaMetadata(f"<nova:{tag}> holds elements, not text")
    return (element.text or "").strip()


def _id(element: ET.Element | None, tag: str) -> str:
    if element is None:
        return ""
    if not element.get("uuid"):
        raise MalformedNovaMetadata(f"<nova:{tag}> without its uuid")
    return element.get("uuid", "")
