"""The Segment-compatible event envelope and typed e-commerce (spec v2) properties.

The envelope accepts what Segment's libraries send (camelCase aliases) and what
our own tools send (snake_case names). Unknown envelope keys are kept out (``extra="ignore"``)
but unknown *properties* and *traits* are kept: brands add their own.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.identifiers import TenantId

Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$", to_upper=True)]
Amount = Annotated[Decimal, Field(max_digits=18, decimal_places=4)]


class EventType(StrEnum):
    TRACK = "track"
    IDENTIFY = "identify"
    PAGE = "page"
    SCREEN = "screen"
    GROUP = "group"
    ALIAS = "alias"


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=False)


class _Open(BaseModel):
    """A model that keeps keys it does not declare (brands send their own)."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")


class Page(_Open):
    url: str | None = None
    path: str | None = None
    referrer: str | None = None
    search: str | None = None
    title: str | None = None


class Campaign(_Open):
    source: str | None = None
    medium: str | None = None
    name: str | None = None
    term: str | None = None
    content: str | None = None


class Library(_Open):
    name: str | None = None
    version: str | None = None


class Device(_Open):
    id: str | None = None
    type: str | None = None
    manufacturer: str | None = None
    model: str | None = None


class Os(_Open):
    name: str | None = None
    version: str | None = None


class Context(_Open):
    ip: str | None = None
    user_agent: str | None = Field(default=None, alias="userAgent")
    page: Page | None = None
    campaign: Campaign | None = None
    locale: str | None = None
    timezone: str | None = None
    library: Library | None = None
    device: Device | None = None
    os: Os | None = None


class Event(_Model):
    """One behavioural event as it arrives (Segment spec common fields + Livora routing)."""

    type: EventType
    message_id: Id = Field(alias="messageId")
    tenant_id: TenantId = Field(alias="tenantId")
    source: str | None = None
    user_id: Id | None = Field(default=None, alias="userId")
    anonymous_id: Id | None = Field(default=None, alias="anonymousId")
    previous_id: Id | None = Field(default=None, alias="previousId")
    group_id: Id | None = Field(default=None, alias="groupId")
    event: str | None = Field(default=None, max_length=256)
    name: str | None = Field(default=None, max_length=256)
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    context: Context = Field(default_factory=Context)
    timestamp: dt.datetime | None = None
    original_timestamp: dt.datetime | None = Field(default=None, alias="originalTimestamp")
    sent_at: dt.datetime | None = Field(default=None, alias="sentAt")
    received_at: dt.datetime | None = Field(default=None, alias="receivedAt")

    @model_validator(mode="after")
    def _check_shape(self) -> Event:
        problem = shape_error(self.type, self.user_id, self.anonymous_id, self.event, self.previous_id, self.group_id)
        if problem is not None:
            raise ValueError(problem)
        return self


def shape_error(
    type_: EventType,
    user_id: str | None,
    anonymous_id: str | None,
    event: str | None,
    previous_id: str | None,
    group_id: str | None,
) -> str | None:
    """The Segment spec's rules across fields (``Event``'s model validator; the batch parser's too)."""
    if not (user_id or anonymous_id):
        return "one of userId or anonymousId is required"
    if type_ is EventType.TRACK and not event:
        return "track events need an event name"
    if type_ is EventType.ALIAS and not previous_id:
        return "alias events need previousId"
    if type_ is EventType.GROUP and not group_id:
        return "group events need groupId"
    return None


# --- E-commerce spec v2 properties -------------------------------------------------------


class Product(_Open):
    product_id: str | None = None
    sku: str | None = None
    category: str | None = None
    name: str | None = None
    brand: str | None = None
    variant: str | None = None
    price: Amount | None = None
    quantity: Annotated[int, Field(ge=0)] | None = None
    coupon: str | None = None
    position: int | None = None
    url: str | None = None
    image_url: str | None = None


class _Money(_Open):
    currency: CurrencyCode = "INR"


class ProductsSearched(_Open):
    query: str | None = None


class ProductListViewed(_Money):
    list_id: str | None = None
    category: str | None = None
    products: list[Product] = Field(default_factory=list)


class ProductEvent(Product, _Money):
    """Product Viewed / Added / Removed: the product's fields at the top level."""

    cart_id: str | None = None
    value: Amount | None = None


class CartViewed(_Money):
    cart_id: str | None = None
    products: list[Product] = Field(default_factory=list)


class Order(_Money):
    """Checkout Started, Order Completed/Refunded/Cancelled share the order fields."""

    checkout_id: str | None = None
    order_id: str | None = None
    affiliation: str | None = None
    value: Amount | None = None
    subtotal: Amount | None = None
    total: Amount | None = None
    revenue: Amount | None = None
    shipping: Amount | None = None
    tax: Amount | None = None
    discount: Amount | None = None
    coupon: str | None = None
    payment_method: str | None = None
    products: list[Product] = Field(default_factory=list)


class PaymentInfoEntered(_Open):
    checkout_id: str | None = None
    order_id: str | None = None
    step: int | None = None
    payment_method: str | None = None


class CouponApplied(_Open):
    order_id: str | None = None
    cart_id: str | None = None
    coupon_id: str | None = None
    coupon_name: str | None = None
    discount: Amount | None = None


ECOMMERCE_PROPERTIES: dict[str, type[BaseModel]] = {
    "Products Searched": ProductsSearched,
    "Product List Viewed": ProductListViewed,
    "Product Viewed": ProductEvent,
    "Product Added": ProductEvent,
    "Product Removed": ProductEvent,
    "Cart Viewed": CartViewed,
    "Checkout Started": Order,
    "Payment Info Entered": PaymentInfoEntered,
    "Order Completed": Order,
    "Order Refunded": Order,
    "Order Cancelled": Order,
    "Coupon Applied": CouponApplied,
}
"""Track event name → typed properties model (the spec marks no property as required)."""

MONEY_EVENTS = frozenset({"Order Completed", "Order Refunded", "Order Cancelled", "Checkout Started"})
"""Events whose ``revenue``/``total`` is booked as ``revenue_inr`` in the lake."""
