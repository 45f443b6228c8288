//! Each rule of `decide`, asserted against its reason (Patroni's test_ha.py style).
