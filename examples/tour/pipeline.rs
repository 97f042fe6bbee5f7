//! The CSV pipeline: a small order file with quoted fields (a comma, escaped quotes, a line
//! break inside a field) and one bad row, turned into JSON lines. The bad row is reported
//! with its line number, and the run goes on.

use palisade::batch::csv::Row;
use palisade::batch::pipeline::{Emit, Fields, Format, Pipeline};

use crate::error::{Context, TourError};

const ORDERS_CSV: &str = "\
sku,name,qty,unit_price
A-100,\"Widget, large\",3,9.99
A-101,\"Gadget \"\"Pro\"\"\",1,24.50
A-102,Gizmo,three,5.00
A-103,\"Sprocket
(two-line label)\",2,1.25
A-104,Flux capacitor,1,1210.00
";

/// Runs the section; returns its summary line.
pub(crate) async fn run() -> Result<String, TourError> {
    let mut output = Vec::new();
    let summary = Pipeline::new(line_total)
        .format(Format::JsonLines)
        .run(ORDERS_CSV.as_bytes(), &mut output)
        .await
        .context("running the CSV pipeline")?;
    let output = String::from_utf8(output).context("reading the pipeline's output")?;
    for line in output.lines() {
        println!("  out  {line}");
    }
    for failure in &summary.failures {
        println!("  bad  {failure}");
    }
    println!(
        "  {} rows in, {} out, {} failed, {} filtered; {} bytes in, {} out",
        summary.rows_in,
        summary.rows_out,
        summary.failed,
        summary.filtered,
        summary.bytes_in,
        summary.bytes_out
    );
    let failure = summary
        .failures
        .first()
        .map_or_else(|| "none".to_owned(), ToString::to_string);
    Ok(format!(
        "{} rows in, {} written as JSON lines, {} reported ({failure})",
        summary.rows_in, summary.rows_out, summary.failed
    ))
}

/// Each order line with its total; a quantity or price that is not a number fails the row.
fn line_total(row: Row<'_>, out: &mut Fields) -> Result<Emit, String> {
    let field = |name: &str| row.get(name).ok_or_else(|| format!("no {name} column"));
    let qty = field("qty")?;
    let qty: u64 = qty
        .parse()
        .map_err(|_| format!("qty {qty:?} is not a number"))?;
    let price = field("unit_price")?;
    let cents = cents(price).ok_or_else(|| format!("unit_price {price:?} is not an amount"))?;
    let total = qty.checked_mul(cents).ok_or("the line total overflows")?;
    out.push("sku", field("sku")?);
    out.push("name", field("name")?);
    out.push_raw("qty", &qty.to_string());
    out.push_raw("total", &format!("{}.{:02}", total / 100, total % 100));
    Ok(Emit::Row)
}

/// `"12.34"` as 1234 cents.
fn cents(amount: &str) -> Option<u64> {
    let (units, fraction) = amount.split_once('.').unwrap_or((amount, "0"));
    if fraction.len() > 2 {
        return None;
    }
    let units: u64 = units.parse().ok()?;
    let fraction: u64 = format!("{fraction:0<2}").parse().ok()?;
    units.checked_mul(100)?.checked_add(fraction)
}
