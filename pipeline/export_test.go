package pipeline

// SetRetiredHook has f called with the types a decoder retires, until the returned function is called.
func SetRetiredHook(f func(types []string)) (restore func()) {
	retiredHook = f
	return func() { retiredHook = nil }
}
