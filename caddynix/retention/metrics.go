package retention

// Metrics is told what collections do, for the cache's Prometheus
// metrics; cache is the cache's name, or its root.
type Metrics interface {
	// IndexRebuilt: the index was built anew from the storage.
	IndexRebuilt(cache string)
	// Collected: a collection ended; report.SizeAfter and what is left
	// of report.Paths are what the cache holds now.
	Collected(cache string, report *Report)
	// Deleted: paths were deleted by name, not by a collection.
	Deleted(cache string, report *Report)
	// Stored: the cache holds paths paths of size bytes.
	Stored(cache string, paths int, size int64)
}

type noMetrics struct{}

func (noMetrics) IndexRebuilt(string)       {}
func (noMetrics) Collected(string, *Report) {}
func (noMetrics) Deleted(string, *Report)   {}
func (noMetrics) Stored(string, int, int64) {}
