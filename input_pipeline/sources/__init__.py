"""Dataset sources: random-access readers of raw records (grain `RandomAccessDataSource`s)."""
