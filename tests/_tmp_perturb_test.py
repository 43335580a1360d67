import pandas as pd, pytest
import test_bars_vs_oracle as m
from ta_lab2.db.connect import connect

def test_perturbed(fresh_db):
    with connect(fresh_db) as c:
        m.load_odd_dataset(c); c.commit()
    m.run_builders(fresh_db, "UTC")
    with connect(fresh_db) as c:
        o = m.compute_oracle(c, "UTC")
        n = {k: len(v) for k, v in o.items()}
        print("oracle sizes", n)
        for b in ("1d", *m.MULTI_TF_BUILDERS):
            print(b, c.execute(f"select count(*) from {m.TABLE[b]}").fetchone())
        bad = o["multi_tf"].copy()
        bad.loc[5, "volume"] = bad.loc[5, "volume"] * (1 + 1e-15)
        bad.loc[7, "missing_days_where"] = "x"
        bad = bad.drop(index=[9])
        o["multi_tf"] = bad
        with pytest.raises(AssertionError) as e:
            m.compare_all(c, o, "multi_tf")
        print(str(e.value)[:3000])
