"""Pages that show run, bench and batch folders from their own files (``geneman report``)."""
