package pipeline

// SetRetiredHook has f called with the types a decoder retires, until the returned function is called.
func SetRetiredHook(f func(types []string)) (restore func()) {
	retiredHook = f
	return func() { retiredHook = nil }
}

// SetSpillKeys has runs write their spilled dedupe keys every n keys, until the returned function is called.
func SetSpillKeys(n int) (restore func()) {
	old := spillKeys
	spillKeys = n
	return func() { spillKeys = old }
}

// SetMergeFan has runs merge their spilled keys n files at a time, until the returned function is called.
func SetMergeFan(n int) (restore func()) {
	old := mergeFan
	mergeFan = n
	return func() { mergeFan = old }
}
