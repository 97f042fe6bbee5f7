//! The typed event bus: three handlers of `order.placed` run concurrently; the receipt
//! mailer fails every time, and the emit report says so while the other two do their work.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use palisade::events::{Event, EventBus, HandlerStatus};

use crate::error::TourError;

#[derive(Debug, Clone)]
struct OrderPlaced {
    order: u32,
    items: u64,
    cents: u64,
}

impl Event for OrderPlaced {
    const NAME: &'static str = "order.placed";
}

const ORDERS: [OrderPlaced; 3] = [
    OrderPlaced {
        order: 1042,
        items: 2,
        cents: 4_999,
    },
    OrderPlaced {
        order: 1043,
        items: 1,
        cents: 1_250,
    },
    OrderPlaced {
        order: 1044,
        items: 5,
        cents: 12_000,
    },
];

/// Runs the section; returns its summary line.
pub(crate) async fn run() -> Result<String, TourError> {
    let bus = EventBus::new();

    let reserved = Arc::new(AtomicU64::new(0));
    let reserve = Arc::clone(&reserved);
    let inventory = bus
        .subscribe()
        .name("inventory")
        .on(move |order: OrderPlaced| {
            reserve.fetch_add(order.items, Ordering::Relaxed);
            async {}
        });
    let points = Arc::new(AtomicU64::new(0));
    let credit = Arc::clone(&points);
    let loyalty = bus
        .subscribe()
        .name("loyalty-points")
        .on(move |order: OrderPlaced| {
            credit.fetch_add(order.cents / 100, Ordering::Relaxed);
            async {}
        });
    let mailer = bus
        .subscribe()
        .name("receipt-mail")
        .on(|order: OrderPlaced| async move {
            Err::<(), _>(format!(
                "smtp refused the receipt for order {}",
                order.order
            ))
        });

    let (mut ok, mut failed) = (0, 0);
    for (index, order) in ORDERS.iter().enumerate() {
        let report = bus.emit(order.clone()).await;
        ok += report.count(HandlerStatus::Ok);
        failed += report.failures().count();
        if index == 0 {
            println!(
                "  emit {} #{}: {} handlers called",
                report.event(),
                order.order,
                report.called()
            );
            for handler in report.outcomes() {
                println!("    {:<15} {}", handler.name(), handler.outcome());
            }
        }
    }
    let (reserved, points) = (
        reserved.load(Ordering::Relaxed),
        points.load(Ordering::Relaxed),
    );
    let expected_items: u64 = ORDERS.iter().map(|o| o.items).sum();
    if reserved != expected_items {
        return Err(TourError::check(
            "event bus",
            format!("inventory reserved {reserved} items, the orders had {expected_items}"),
        ));
    }
    println!(
        "  {} orders: {ok} handler calls ok, {failed} failed; inventory still reserved {reserved} items, loyalty credited {points} points",
        ORDERS.len()
    );
    drop((inventory, loyalty, mailer));
    Ok(format!(
        "{} events × 3 handlers: {ok} ok, {failed} failed (receipt-mail, isolated); inventory reserved {reserved} items, {points} loyalty points",
        ORDERS.len()
    ))
}
