"""Custom search attributes: how people and `skyloom status` find skyloom's workflows."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

SA_KIND = SearchAttributeKey.for_keyword("SkyloomKind")
SA_NAME = SearchAttributeKey.for_keyword("SkyloomName")
SA_STATUS = SearchAttributeKey.for_keyword("SkyloomStatus")
SA_INFRA = SearchAttributeKey.for_keyword("SkyloomInfra")
SA_USER = SearchAttributeKey.for_keyword("SkyloomUser")

ALL = (SA_KIND, SA_NAME, SA_STATUS, SA_INFRA, SA_USER)
