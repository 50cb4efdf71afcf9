"""Writes the settlement report fixtures next to this file: python tests/data/settlement/make_fixtures.py

The files are committed; tests/ingest/test_settlement_fixtures.py checks that they are what this
script writes, so a change here shows up as a diff of the fixtures. Amounts are computed in
Decimal from a seeded random generator: every good batch balances to the cent by construction,
and each hostile file is a small good batch with exactly one thing broken, named by its file name.
The column names and their meaning follow the PSPs' documentation of the two reports; the data
(merchants, references, orders) is made up.
"""

from __future__ import annotations

import csv
import io
import random
import string
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

HERE = Path(__file__).parent
CENT = Decimal("0.01")


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def write_csv(name: str, header: list[str], rows: list[dict[str, str]]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (HERE / name).write_text(buffer.getvalue(), encoding="utf-8", newline="")


# --- Adyen Settlement details report -----------------------------------------------------------

ADYEN_HEADER = [
    "Company Account", "Merchant Account", "Psp Reference", "Merchant Reference", "Payment Method",
    "Creation Date", "TimeZone", "Type", "Modification Reference", "Gross Currency", "Gross Debit (GC)",
    "Gross Credit (GC)", "Exchange Rate", "Net Currency", "Net Debit (NC)", "Net Credit (NC)",
    "Commission (NC)", "Markup (NC)", "Scheme Fees (NC)", "Interchange (NC)", "Payment Method Variant",
    "Modification Merchant Reference", "Batch Number", "Booking Date", "Booking Date TimeZone",
]  # fmt: skip
VARIANTS = {"visa": "visaclassic", "mc": "mccredit", "amex": "amex", "ideal": "ideal"}


class AdyenBatch:
    """The rows of one Adyen batch, in EUR, with the running net the payout must equal."""

    def __init__(self, rng: random.Random, batch: int, day: int):
        self.rng = rng
        self.batch = str(batch)
        self.day = day
        self.rows: list[dict[str, str]] = []
        self.net = Decimal(0)
        self.settled: list[tuple[str, str, Decimal]] = []  # (psp reference, order, gross)

    def reference(self) -> str:
        return "".join(self.rng.choices(string.digits, k=16))

    def time(self) -> str:
        hour, minute, second = self.rng.randint(0, 22), self.rng.randint(0, 59), self.rng.randint(0, 59)
        return f"2026-11-{self.day:02d} {hour:02d}:{minute:02d}:{second:02d}"

    def row(self, **cells: str) -> dict[str, str]:
        created = self.time()
        row = {
            "Company Account": "AcmeGroup", "Merchant Account": "AcmeShopEUR", "Creation Date": created,
            "TimeZone": "CET", "Booking Date": created, "Booking Date TimeZone": "CET",
            "Batch Number": self.batch, **cells,
        }  # fmt: skip
        self.rows.append(row)
        return row

    def settled_payment(self, order: str) -> None:
        gross = Decimal(self.rng.randint(500, 50_000)).scaleb(-2)
        method = self.rng.choice(["visa", "visa", "mc", "mc", "amex", "ideal"])
        if method in ("visa", "mc"):  # interchange++: the scheme's costs passed on, plus Adyen's markup
            fees = {
                "Commission (NC)": Decimal("0.11"),
                "Markup (NC)": cents(gross * Decimal("0.0060")),
                "Scheme Fees (NC)": cents(gross * Decimal("0.0002")) + Decimal("0.02"),
                "Interchange (NC)": cents(gross * Decimal("0.0030")),
            }
        elif method == "amex":  # blended: one commission
            fees = {"Commission (NC)": cents(gross * Decimal("0.0250")) + Decimal("0.11")}
        else:
            fees = {"Commission (NC)": Decimal("0.29")}
        net = gross - sum(fees.values())
        psp = self.reference()
        self.row(
            **{"Psp Reference": psp, "Merchant Reference": order, "Payment Method": method, "Type": "Settled",
               "Modification Reference": self.reference(), "Gross Currency": "EUR", "Gross Credit (GC)": str(gross),
               "Exchange Rate": "1", "Net Currency": "EUR", "Net Credit (NC)": str(net),
               "Payment Method Variant": VARIANTS[method]},
            **{column: str(amount) for column, amount in fees.items()},
        )  # fmt: skip
        self.net += net
        self.settled.append((psp, order, gross))

    def refund(self, psp: str, order: str, amount: Decimal, method: str = "visa") -> None:
        commission = Decimal("0.11")
        self.row(
            **{"Psp Reference": psp, "Merchant Reference": order, "Payment Method": method, "Type": "Refunded",
               "Modification Reference": self.reference(), "Gross Currency": "EUR", "Gross Debit (GC)": str(amount),
               "Exchange Rate": "1", "Net Currency": "EUR", "Net Debit (NC)": str(amount + commission),
               "Commission (NC)": str(commission), "Payment Method Variant": VARIANTS[method],
               "Modification Merchant Reference": f"REFUND-{order}"}
        )  # fmt: skip
        self.net -= amount + commission

    def chargeback(self, psp: str, order: str, amount: Decimal) -> None:
        fee = Decimal("15.00")  # the chargeback handling fee
        self.row(
            **{"Psp Reference": psp, "Merchant Reference": order, "Payment Method": "mc", "Type": "Chargeback",
               "Modification Reference": self.reference(), "Gross Currency": "EUR", "Gross Debit (GC)": str(amount),
               "Exchange Rate": "1", "Net Currency": "EUR", "Net Debit (NC)": str(amount + fee),
               "Commission (NC)": str(fee), "Payment Method Variant": "mccredit"}
        )  # fmt: skip
        self.net -= amount + fee

    def chargeback_reversed(self, psp: str, order: str, amount: Decimal) -> None:
        self.row(
            **{"Psp Reference": psp, "Merchant Reference": order, "Payment Method": "visa",
               "Type": "ChargebackReversed", "Modification Reference": self.reference(), "Gross Currency": "EUR",
               "Gross Credit (GC)": str(amount), "Exchange Rate": "1", "Net Currency": "EUR",
               "Net Credit (NC)": str(amount), "Payment Method Variant": "visaclassic"}
        )  # fmt: skip
        self.net += amount

    def fee(self, description: str, amount: Decimal) -> None:
        self.row(**{"Type": "Fee", "Modification Reference": description, "Net Currency": "EUR",
                    "Net Debit (NC)": str(amount)})  # fmt: skip
        self.net -= amount

    def balance_from(self, batch: int, amount: Decimal) -> None:
        """The balance `batch` carried here (negative: a deficit taken over)."""
        side = "Net Credit (NC)" if amount > 0 else "Net Debit (NC)"
        self.row(**{"Type": "Balancetransfer", "Modification Reference": "Balancetransfer", "Net Currency": "EUR",
                    side: str(abs(amount)),
                    "Modification Merchant Reference": f"Balancetransfer from batch {batch}"})  # fmt: skip
        self.net += amount

    def close_by_carrying_to(self, batch: int) -> Decimal:
        """Hand the whole balance to `batch` (no payout); returns the balance carried."""
        carried = self.net
        side = "Net Debit (NC)" if carried > 0 else "Net Credit (NC)"
        self.row(**{"Type": "Balancetransfer", "Modification Reference": "Balancetransfer", "Net Currency": "EUR",
                    side: str(abs(carried)),
                    "Modification Merchant Reference": f"Balancetransfer to batch {batch}"})  # fmt: skip
        self.net = Decimal(0)
        return carried

    def close_by_payout(self, bank_reference: str, error: Decimal = Decimal(0)) -> Decimal:
        """Pay the balance to the bank (`error` added to the stated amount); returns the amount stated."""
        payout = self.net + error
        self.row(**{"Type": "MerchantPayout", "Modification Reference": bank_reference, "Net Currency": "EUR",
                    "Net Debit (NC)": str(payout), "Booking Date": f"2026-11-{self.day:02d} 23:59:00",
                    "Creation Date": f"2026-11-{self.day:02d} 23:59:00"})  # fmt: skip
        self.net = Decimal(0)
        return payout

    def write(self, name: str) -> None:
        write_csv(name, ADYEN_HEADER, self.rows)


def adyen_batch_4(rng: random.Random) -> None:
    """A day of sales: 300 settled payments, 6 refunds, a chargeback, a reversed one, a fee line, the payout."""
    batch = AdyenBatch(rng, 4, day=3)
    for n in range(300):
        batch.settled_payment(f"ORD-{100_001 + n}")
    for psp, order, gross in rng.sample(batch.settled[:200], 6):
        batch.refund(psp, order, cents(gross * Decimal(rng.choice(["1", "0.5", "0.25"]))))
    psp, order, gross = batch.settled[250]
    batch.chargeback(psp, order, gross)
    batch.chargeback_reversed(batch.reference(), "ORD-099871", Decimal("129.90"))  # disputed last month
    batch.fee("Transaction Fees November 2026", Decimal("12.40"))
    batch.close_by_payout("TX4821937650XT")
    batch.write("adyen_batch_4.csv")


def adyen_carry_over(rng: random.Random) -> None:
    """Batch 5 ends in deficit (a large refund and a chargeback): no payout, the deficit goes to batch 6,
    which takes it over and pays out the rest."""
    batch = AdyenBatch(rng, 5, day=4)
    for n in range(4):
        batch.settled_payment(f"ORD-{100_401 + n}")
    batch.refund(batch.reference(), "ORD-099500", Decimal("1250.00"))
    batch.chargeback(batch.reference(), "ORD-099650", Decimal("310.00"))
    batch.fee("Transaction Fees November 2026", Decimal("0.85"))
    carried = batch.close_by_carrying_to(6)
    assert carried < 0
    batch.write("adyen_batch_5_carry_over.csv")

    batch = AdyenBatch(rng, 6, day=5)
    batch.balance_from(5, carried)
    for n in range(40):
        batch.settled_payment(f"ORD-{100_501 + n}")
    batch.close_by_payout("TX4821990144XT")
    batch.write("adyen_batch_6_after_carry_over.csv")


def small_adyen_batch(seed: int) -> AdyenBatch:
    batch = AdyenBatch(random.Random(seed), 7, day=6)
    for n in range(8):
        batch.settled_payment(f"ORD-{200_001 + n}")
    psp, order, gross = batch.settled[2]
    batch.refund(psp, order, gross)
    return batch


def adyen_hostile() -> None:
    batch = small_adyen_batch(71)
    row = batch.rows[3]
    row["Net Credit (NC)"] = str(Decimal(row["Net Credit (NC)"]) + CENT)  # the line no longer adds up...
    batch.net += CENT  # ...but the payout agrees with it: only the line check can catch it
    batch.close_by_payout("TX5000000001XT")
    batch.write("adyen_line_does_not_add_up.csv")

    batch = small_adyen_batch(72)
    batch.close_by_payout("TX5000000002XT", error=CENT)
    batch.write("adyen_batch_does_not_sum.csv")

    batch = small_adyen_batch(73)
    batch.rows[5].update({"Gross Currency": "USD", "Net Currency": "USD"})
    batch.close_by_payout("TX5000000003XT")
    batch.write("adyen_wrong_currency.csv")

    batch = small_adyen_batch(74)
    row = batch.rows[4]
    row["Gross Credit (GC)"] = row["Gross Credit (GC)"].replace(".", ",")  # a European decimal comma
    batch.close_by_payout("TX5000000004XT")
    batch.write("adyen_non_decimal_amount.csv")

    batch = small_adyen_batch(75)
    row = batch.rows[6]
    row["Net Credit (NC)"] = repr(float(row["Net Credit (NC)"]) + 1e-12)  # float noise from a spreadsheet
    batch.close_by_payout("TX5000000005XT")
    batch.write("adyen_float_amount.csv")

    batch = small_adyen_batch(76)
    batch.write("adyen_truncated_before_payout.csv")  # cut at a row boundary: the batch never closes

    batch = small_adyen_batch(77)
    batch.close_by_payout("TX5000000007XT")
    batch.write("adyen_truncated_mid_row.csv")
    path = HERE / "adyen_truncated_mid_row.csv"
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 60], encoding="utf-8", newline="")

    batch = small_adyen_batch(78)
    batch.rows[1]["Merchant Reference"] = "Café-ORD-7"
    batch.close_by_payout("TX5000000008XT")
    batch.write("adyen_not_utf8.csv")
    path = HERE / "adyen_not_utf8.csv"
    path.write_bytes(path.read_text(encoding="utf-8").encode("latin-1"))  # as a spreadsheet might save it


# --- Stripe itemized payout reconciliation report -----------------------------------------------

STRIPE_HEADER = [
    "automatic_payout_id", "automatic_payout_effective_at", "balance_transaction_id", "created_utc",
    "available_on_utc", "currency", "gross", "fee", "net", "reporting_category", "source_id", "description",
    "customer_facing_amount", "customer_facing_currency", "charge_id", "payment_intent_id",
    "payment_method_type", "card_brand", "payment_metadata[order_id]",
]  # fmt: skip


class StripePayout:
    """The balance transactions of one automatic payout, in USD."""

    def __init__(self, rng: random.Random, day: int):
        self.rng = rng
        self.day = day
        self.payout_id = self.id("po_")
        self.rows: list[dict[str, str]] = []
        self.net = Decimal(0)
        self.charges: list[tuple[str, str, str, Decimal]] = []  # (charge, payment intent, order, gross)

    def id(self, prefix: str) -> str:
        return prefix + "".join(self.rng.choices(string.ascii_letters + string.digits, k=24))

    def row(self, category: str, gross: Decimal, fee: Decimal, **cells: str) -> None:
        hour, minute, second = self.rng.randint(0, 23), self.rng.randint(0, 59), self.rng.randint(0, 59)
        created = f"2026-11-{self.day:02d} {hour:02d}:{minute:02d}:{second:02d}"
        net = gross - fee
        self.rows.append({
            "automatic_payout_id": self.payout_id,
            "automatic_payout_effective_at": f"2026-11-{self.day + 2:02d} 00:00:00",
            "balance_transaction_id": self.id("txn_"), "created_utc": created,
            "available_on_utc": f"2026-11-{self.day + 2:02d} 00:00:00", "currency": "usd", "gross": str(gross),
            "fee": str(fee), "net": str(net), "reporting_category": category, **cells,
        })  # fmt: skip
        self.net += net

    def charge(self, order: str) -> None:
        gross = Decimal(self.rng.randint(300, 40_000)).scaleb(-2)
        charge, intent = self.id("ch_"), self.id("pi_")
        brand = self.rng.choice(["visa", "visa", "mastercard", "amex"])
        description = f'Order {order}, "{self.rng.choice(["Blue", "Red", "Green"])}" mug'  # commas and quotes
        self.row("charge", gross, cents(gross * Decimal("0.029")) + Decimal("0.30"), source_id=charge,
                 description=description, customer_facing_amount=str(gross), customer_facing_currency="usd",
                 charge_id=charge, payment_intent_id=intent, payment_method_type="card", card_brand=brand,
                 **{"payment_metadata[order_id]": order})  # fmt: skip
        self.charges.append((charge, intent, order, gross))

    def refund(self, charge: str, intent: str, order: str, amount: Decimal) -> None:
        self.row("refund", -amount, Decimal("0.00"), source_id=self.id("re_"), description="REFUND FOR CHARGE",
                 charge_id=charge, payment_intent_id=intent, payment_method_type="card",
                 **{"payment_metadata[order_id]": order})  # fmt: skip

    def dispute(self, charge: str, intent: str, order: str, amount: Decimal) -> None:
        self.row("dispute", -amount, Decimal("15.00"), source_id=self.id("dp_"), description="Chargeback withdrawal",
                 charge_id=charge, payment_intent_id=intent, payment_method_type="card",
                 **{"payment_metadata[order_id]": order})  # fmt: skip

    def dispute_reversal(self, charge: str, intent: str, order: str, amount: Decimal) -> None:
        self.row("dispute_reversal", amount, Decimal("-15.00"), source_id=self.id("dp_"),
                 description="Chargeback reversal", charge_id=charge, payment_intent_id=intent,
                 payment_method_type="card", **{"payment_metadata[order_id]": order})  # fmt: skip

    def fee(self, description: str, amount: Decimal) -> None:
        self.row("fee", -amount, Decimal("0.00"), description=description)

    def payout_row(self, error: Decimal = Decimal(0)) -> None:
        """The payout's own row, as the balance report lists it: its source is the payout."""
        amount = self.net + error
        self.rows.append({
            "automatic_payout_id": "", "balance_transaction_id": self.id("txn_"),
            "created_utc": f"2026-11-{self.day + 2:02d} 00:00:00", "currency": "usd", "gross": str(-amount),
            "fee": "0.00", "net": str(-amount), "reporting_category": "payout", "source_id": self.payout_id,
            "description": "STRIPE PAYOUT",
        })  # fmt: skip


def stripe_payouts(rng: random.Random) -> None:
    """Two automatic payouts: charges, refunds, a dispute and a Radar fee; then charges, refunds and
    the dispute of an earlier payout won back."""
    first = StripePayout(rng, day=2)
    for n in range(120):
        first.charge(f"ORD-{300_001 + n}")
    for charge, intent, order, gross in rng.sample(first.charges[:100], 4):
        first.refund(charge, intent, order, cents(gross * Decimal(rng.choice(["1", "0.5"]))))
    charge, intent, order, gross = first.charges[110]
    first.dispute(charge, intent, order, gross)
    first.fee("Radar for Fraud Teams (2026-11-02)", Decimal("8.40"))

    second = StripePayout(rng, day=3)
    for n in range(60):
        second.charge(f"ORD-{300_201 + n}")
    for charge, intent, order, gross in rng.sample(second.charges, 2):
        second.refund(charge, intent, order, gross)
    second.dispute_reversal(second.id("ch_"), second.id("pi_"), "ORD-299123", Decimal("74.00"))
    write_csv("stripe_payouts.csv", STRIPE_HEADER, first.rows + second.rows)


def small_stripe_payout(seed: int) -> StripePayout:
    payout = StripePayout(random.Random(seed), day=9)
    for n in range(8):
        payout.charge(f"ORD-{400_001 + n}")
    charge, intent, order, gross = payout.charges[1]
    payout.refund(charge, intent, order, gross)
    return payout


def stripe_with_payout_rows() -> None:
    payout = small_stripe_payout(90)
    payout.payout_row()
    write_csv("stripe_payout_with_payout_row.csv", STRIPE_HEADER, payout.rows)

    payout = small_stripe_payout(91)
    row = payout.rows[4]
    row["net"] = str(Decimal(row["net"]) - CENT)  # net != gross - fee
    payout.net -= CENT
    write_csv("stripe_line_does_not_add_up.csv", STRIPE_HEADER, payout.rows)

    payout = small_stripe_payout(92)
    payout.payout_row(error=-CENT)
    write_csv("stripe_payout_does_not_sum.csv", STRIPE_HEADER, payout.rows)

    payout = small_stripe_payout(93)
    payout.rows[6]["currency"] = "eur"
    write_csv("stripe_wrong_currency.csv", STRIPE_HEADER, payout.rows)

    payout = small_stripe_payout(94)
    payout.rows[3]["gross"] = "$" + payout.rows[3]["gross"]
    write_csv("stripe_non_decimal_amount.csv", STRIPE_HEADER, payout.rows)

    payout = small_stripe_payout(95)
    write_csv("stripe_truncated.csv", STRIPE_HEADER, payout.rows)
    path = HERE / "stripe_truncated.csv"
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: text.rindex('"Order ') + 10], encoding="utf-8", newline="")  # ends in a quoted cell


def main() -> None:
    adyen_batch_4(random.Random(4))
    adyen_carry_over(random.Random(5))
    adyen_hostile()
    stripe_payouts(random.Random(2))
    stripe_with_payout_rows()


if __name__ == "__main__":
    main()
