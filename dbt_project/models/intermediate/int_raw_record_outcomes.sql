{{ raw_record_outcomes() }}
