-- Cancelling an order retires its waiting payment job: find it by order without a scan.
-- (A migration of its own: 000004 is already applied where petmesh runs, and sqlx refuses
-- an applied migration whose text changed.)
create index if not exists job_payment_order_idx on job ((payload ->> 'orderId')) where kind = 'payment';
