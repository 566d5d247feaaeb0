"""The demo's check summary folds a check's partitions into one line."""

from kingtavo_pipeline.cli import check_lines


def test_one_line_per_check_with_the_worst_verdict_and_the_days_that_did_not_pass():
    checks = [("core/orders", "validity", "PASS", f"2024-11-0{d}") for d in range(1, 8)]
    checks += [("core/orders", "order_customer_exists", "PASS", "2024-11-01"),
               ("core/orders", "order_customer_exists", "WARN", "2024-11-02"),
               ("warehouse/orders_fact", "unique_keys", "FAIL", "2024-11-03"),
               ("warehouse/orders_fact", "unique_keys", "WARN", "2024-11-04"),
               ("core/unified_items", "core_reflects_raw", "PASS", None)]
    assert check_lines(checks) == [
        "  PASS  core/orders validity (7 partitions)",
        "  WARN  core/orders order_customer_exists (2 partitions): not passed on 2024-11-02",
        "  FAIL  warehouse/orders_fact unique_keys (2 partitions): not passed on 2024-11-03, 2024-11-04",
        "  PASS  core/unified_items core_reflects_raw",
    ]
    many = [("raw/x", "volume", "WARN", f"2024-11-{d:02d}") for d in range(1, 9)]
    assert check_lines(many) == ["  WARN  raw/x volume (8 partitions): not passed on 2024-11-01, 2024-11-02, "
                                 "2024-11-03, 2024-11-04, 2024-11-05 and 3 more"]
